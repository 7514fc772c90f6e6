//! Whether a failed or busy attempt is tried again.
//!
//! Only outcomes the route lists in `retry.on` are retried, only while
//! attempts remain, and (until backoff lands) only on a server this request
//! has not tried yet, so one request never hammers one backend.

use crate::config::RetryConfig;
use crate::outcome::Outcome;

/// `attempt` is the 1-based number of the attempt that just ended.
pub fn should_retry(cfg: &RetryConfig, outcome: Outcome, attempt: u32, untried_left: bool) -> bool {
    let listed = cfg.on.contains(&outcome.retry_on());
    listed && attempt < cfg.attempts && untried_left
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RetryOn;
    use std::time::Duration;

    fn cfg(attempts: u32, on: &[RetryOn]) -> RetryConfig {
        RetryConfig {
            attempts,
            on: on.to_vec(),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            jitter: 0.1,
            budget: 0.2,
        }
    }

    #[test]
    fn retries_listed_outcomes_while_attempts_remain() {
        let c = cfg(3, &[RetryOn::ConnectError, RetryOn::Status(503)]);
        assert!(should_retry(&c, Outcome::ConnectError, 1, true));
        assert!(should_retry(&c, Outcome::Status(503), 2, true));
        assert!(!should_retry(&c, Outcome::Status(503), 3, true));
    }

    #[test]
    fn unlisted_outcomes_are_final() {
        let c = cfg(3, &[RetryOn::ConnectError]);
        assert!(!should_retry(&c, Outcome::Timeout, 1, true));
        assert!(!should_retry(&c, Outcome::Reset, 1, true));
        assert!(!should_retry(&c, Outcome::Status(500), 1, true));
        assert!(!should_retry(&c, Outcome::Status(200), 1, true));
    }

    #[test]
    fn no_untried_server_no_retry() {
        let c = cfg(3, &[RetryOn::ConnectError]);
        assert!(!should_retry(&c, Outcome::ConnectError, 1, false));
    }
}
