//! Fixed one-minute windows, aligned to Unix time so that every gateway
//! (and Redis) agrees on which window a moment belongs to, and the answer
//! a key gets when it asks for one more request.

use crate::keys::KeyLimits;
use std::time::Duration;

pub const WINDOW_MS: u64 = 60_000;

/// The window a moment (Unix milliseconds) falls in, and the time left in it.
pub fn window_of(now_ms: u64) -> (u64, Duration) {
    (
        now_ms / WINDOW_MS,
        Duration::from_millis(WINDOW_MS - now_ms % WINDOW_MS),
    )
}

/// A key's use of the current window, as counted before this request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub requests: u64,
    pub tokens: u64,
    pub in_flight: u64,
}

/// Which limit turned a request away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    Requests,
    Tokens,
    Concurrency,
}

impl Exceeded {
    pub fn label(self) -> &'static str {
        match self {
            Exceeded::Requests => "rpm",
            Exceeded::Tokens => "tpm",
            Exceeded::Concurrency => "concurrency",
        }
    }
}

/// Whether one more request fits, given the use so far.
pub fn check(limits: &KeyLimits, used: &Usage) -> Result<(), Exceeded> {
    if limits.rpm > 0 && used.requests >= limits.rpm {
        return Err(Exceeded::Requests);
    }
    if limits.tpm > 0 && used.tokens >= limits.tpm {
        return Err(Exceeded::Tokens);
    }
    if limits.concurrency > 0 && used.in_flight >= limits.concurrency {
        return Err(Exceeded::Concurrency);
    }
    Ok(())
}

/// What the `x-ratelimit-*` headers say (in the shape OpenAI's API uses,
/// which its clients read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateHeaders {
    pub requests: Option<(u64, u64)>,
    pub tokens: Option<(u64, u64)>,
    /// Until the window resets.
    pub reset: Duration,
}

impl RateHeaders {
    /// The headers after a request was counted (`used` includes it when it
    /// was admitted).
    pub fn new(limits: &KeyLimits, used: &Usage, reset: Duration) -> Self {
        let pair = |limit: u64, used: u64| (limit > 0).then(|| (limit, limit.saturating_sub(used)));
        RateHeaders {
            requests: pair(limits.rpm, used.requests),
            tokens: pair(limits.tpm, used.tokens),
            reset,
        }
    }

    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let reset = openai_duration(self.reset);
        let mut out = Vec::new();
        if let Some((limit, remaining)) = self.requests {
            out.push(("x-ratelimit-limit-requests", limit.to_string()));
            out.push(("x-ratelimit-remaining-requests", remaining.to_string()));
            out.push(("x-ratelimit-reset-requests", reset.clone()));
        }
        if let Some((limit, remaining)) = self.tokens {
            out.push(("x-ratelimit-limit-tokens", limit.to_string()));
            out.push(("x-ratelimit-remaining-tokens", remaining.to_string()));
            out.push(("x-ratelimit-reset-tokens", reset));
        }
        out
    }
}

/// A duration as OpenAI writes it in `x-ratelimit-reset-*`: `"1s"`,
/// `"6m0s"`, `"250ms"`.
pub fn openai_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = ms.div_ceil(1000);
    if secs < 60 {
        format!("{secs}s")
    } else {
        format!("{}m{}s", secs / 60, secs % 60)
    }
}

/// `Retry-After` in whole seconds, never 0.
pub fn retry_after_secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rpm: u64, tpm: u64, concurrency: u64) -> KeyLimits {
        KeyLimits {
            rpm,
            tpm,
            concurrency,
        }
    }

    #[test]
    fn windows_are_aligned_minutes() {
        assert_eq!(window_of(0), (0, Duration::from_secs(60)));
        assert_eq!(window_of(59_999), (0, Duration::from_millis(1)));
        assert_eq!(window_of(60_000), (1, Duration::from_secs(60)));
        assert_eq!(window_of(125_500), (2, Duration::from_millis(54_500)));
    }

    #[test]
    fn each_limit_in_turn() {
        let l = limits(2, 100, 1);
        let used = |requests, tokens, in_flight| Usage {
            requests,
            tokens,
            in_flight,
        };
        assert_eq!(check(&l, &used(1, 99, 0)), Ok(()));
        assert_eq!(check(&l, &used(2, 0, 0)), Err(Exceeded::Requests));
        assert_eq!(check(&l, &used(0, 100, 0)), Err(Exceeded::Tokens));
        assert_eq!(check(&l, &used(0, 0, 1)), Err(Exceeded::Concurrency));
        // 0 is no limit.
        assert_eq!(check(&limits(0, 0, 0), &used(1000, 1 << 40, 500)), Ok(()));
    }

    #[test]
    fn headers_in_openais_shape() {
        let h = RateHeaders::new(
            &limits(60, 1000, 0),
            &Usage {
                requests: 1,
                tokens: 1200,
                in_flight: 1,
            },
            Duration::from_millis(12_300),
        );
        assert_eq!(
            h.pairs(),
            vec![
                ("x-ratelimit-limit-requests", "60".to_string()),
                ("x-ratelimit-remaining-requests", "59".to_string()),
                ("x-ratelimit-reset-requests", "13s".to_string()),
                ("x-ratelimit-limit-tokens", "1000".to_string()),
                ("x-ratelimit-remaining-tokens", "0".to_string()),
                ("x-ratelimit-reset-tokens", "13s".to_string()),
            ]
        );
        let only_concurrency =
            RateHeaders::new(&limits(0, 0, 4), &Usage::default(), Duration::ZERO);
        assert!(only_concurrency.pairs().is_empty());
        assert_eq!(openai_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(openai_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(12_001)), 13);
    }
}
