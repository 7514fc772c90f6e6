//! What one upstream attempt turned out to be, and what that means for the
//! server's health. Retry decisions build on the same classification.

use crate::config::RetryOn;
use crate::metrics;
use std::borrow::Cow;

/// The result of one attempt, as far as the server's health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The TCP connection could not be made (refused, unreachable, timed out).
    ConnectError,
    /// Connected, but no response head / first byte within the deadline.
    Timeout,
    /// The connection broke (reset or closed) before a full response.
    Reset,
    /// A response head arrived with this status.
    Status(u16),
    /// The gateway itself ran out of something (file descriptors, ports,
    /// memory) before reaching the backend: says nothing about the backend.
    Local,
}

impl Outcome {
    /// nginx semantics: connect errors, timeouts, resets and 5xx other than
    /// 501/505 count against `max_fails`. 4xx (429 included) never do, so a
    /// client cannot knock a backend out with bad requests.
    pub fn is_server_failure(self) -> bool {
        match self {
            Outcome::ConnectError | Outcome::Timeout | Outcome::Reset => true,
            Outcome::Local => false,
            Outcome::Status(code) => (500..600).contains(&code) && code != 501 && code != 505,
        }
    }

    /// Label for `ballast_upstream_attempts_total{outcome}`: the status
    /// code, or the kind of failure.
    pub fn label(self) -> Cow<'static, str> {
        match self {
            Outcome::ConnectError => "connect_error".into(),
            Outcome::Timeout => "timeout".into(),
            Outcome::Reset => "reset".into(),
            Outcome::Local => "local_error".into(),
            Outcome::Status(code) => metrics::status_label(code),
        }
    }

    /// The `route.retry.on` entry this outcome matches, if any could.
    pub fn retry_on(self) -> Option<RetryOn> {
        match self {
            Outcome::ConnectError => Some(RetryOn::ConnectError),
            Outcome::Timeout => Some(RetryOn::Timeout),
            Outcome::Reset => Some(RetryOn::Reset),
            Outcome::Status(code) => Some(RetryOn::Status(code)),
            // Another server would hit the same local limit.
            Outcome::Local => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_follow_nginx() {
        for code in [500, 502, 503, 504, 599] {
            assert!(Outcome::Status(code).is_server_failure(), "{code}");
        }
        for code in [200, 204, 301, 400, 404, 429, 501, 505] {
            assert!(!Outcome::Status(code).is_server_failure(), "{code}");
        }
        assert!(Outcome::ConnectError.is_server_failure());
        assert!(Outcome::Timeout.is_server_failure());
        assert!(Outcome::Reset.is_server_failure());
        assert!(!Outcome::Local.is_server_failure());
        assert_eq!(Outcome::Local.retry_on(), None);
    }

    #[test]
    fn labels() {
        assert_eq!(Outcome::Status(429).label(), "429");
        assert_eq!(Outcome::ConnectError.label(), "connect_error");
        assert_eq!(Outcome::Status(100).label(), "100");
        assert_eq!(Outcome::Status(599).label(), "599");
        assert_eq!(Outcome::Status(600).label(), "600");
        assert_eq!(Outcome::Status(42).label(), "42");
    }
}
