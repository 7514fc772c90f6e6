//! Per-key limits: requests and tokens per one-minute window, and requests
//! in flight. Counted in this process, or in Redis so that every gateway
//! replica enforces one limit (`[ratelimit] redis`).

mod redis_store;
pub mod window;

use crate::config::RateLimitSection;
use crate::keys::ClientKey;
use crate::metrics;
use redis_store::RedisStore;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
pub use window::{Exceeded, RateHeaders, Usage};

/// How long a request over `max_concurrent` waits for a place, and how
/// often it looks.
const CONCURRENCY_WAIT: Duration = Duration::from_millis(100);
const CONCURRENCY_POLL: Duration = Duration::from_millis(10);

pub struct Limiter {
    store: Store,
    fail_open: bool,
}

enum Store {
    Local(Mutex<HashMap<String, LocalCount>>),
    Redis(RedisStore),
}

/// A key's counts in this process.
#[derive(Default)]
struct LocalCount {
    window: u64,
    requests: u64,
    tokens: u64,
    in_flight: u64,
}

impl LocalCount {
    /// Start over when a new window began.
    fn roll(&mut self, window: u64) {
        if self.window != window {
            self.window = window;
            self.requests = 0;
            self.tokens = 0;
        }
    }
}

pub enum Decision {
    Allowed(Grant),
    Limited {
        exceeded: Exceeded,
        retry_after: Duration,
        headers: RateHeaders,
    },
    /// The shared counters cannot be reached and `fail_open` is off.
    Unavailable,
}

/// An admitted request: the headers to answer with, and its place among
/// the key's requests in flight, given back when this is dropped.
pub struct Grant {
    pub headers: Option<RateHeaders>,
    _slot: Option<Slot>,
}

struct Slot {
    limiter: Arc<Limiter>,
    key: String,
    /// Its member in the Redis set of requests in flight.
    member: Option<String>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limiter.release(&self.key, self.member.take());
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Limiter {
    /// `stale`: how long a request may be in flight at most (the longest
    /// route deadline); a Redis count older than that was left by a
    /// gateway that died, and no longer counts.
    pub fn new(cfg: &RateLimitSection, stale: Duration) -> anyhow::Result<Arc<Limiter>> {
        let store = match &cfg.redis {
            None => Store::Local(Mutex::new(HashMap::new())),
            Some(url) => Store::Redis(RedisStore::new(url, cfg.timeout, stale)?),
        };
        metrics::ratelimit_store_up(true);
        Ok(Arc::new(Limiter {
            store,
            fail_open: cfg.fail_open,
        }))
    }

    /// Count one more request of `key`, or say which limit it is over.
    ///
    /// A request over `max_concurrent` waits up to `CONCURRENCY_WAIT` for a
    /// place first: a client that sends its next request the moment an
    /// answer ends (maybe to another gateway) can arrive before that
    /// answer's place is given back, which happens just after its last
    /// byte was written.
    pub async fn admit(self: &Arc<Self>, key: &ClientKey) -> Decision {
        let until = std::time::Instant::now() + CONCURRENCY_WAIT;
        loop {
            let decision = self.admit_at(key, now_ms()).await;
            let busy = matches!(
                decision,
                Decision::Limited {
                    exceeded: Exceeded::Concurrency,
                    ..
                }
            );
            if !busy || std::time::Instant::now() >= until {
                return decision;
            }
            tokio::time::sleep(CONCURRENCY_POLL).await;
        }
    }

    /// `admit` at `now` (Unix milliseconds).
    pub async fn admit_at(self: &Arc<Self>, key: &ClientKey, now: u64) -> Decision {
        let limits = key.limits;
        let (window, reset) = window::window_of(now);
        let counted = match &self.store {
            Store::Local(counts) => {
                let mut counts = counts.lock().unwrap_or_else(|p| p.into_inner());
                let c = counts.entry(key.name.clone()).or_default();
                c.roll(window);
                let used = Usage {
                    requests: c.requests,
                    tokens: c.tokens,
                    in_flight: c.in_flight,
                };
                match window::check(&limits, &used) {
                    Err(e) => Ok(Err((e, used))),
                    Ok(()) => {
                        c.requests += 1;
                        c.in_flight += 1;
                        Ok(Ok((
                            Usage {
                                requests: c.requests,
                                tokens: c.tokens,
                                in_flight: c.in_flight,
                            },
                            None,
                        )))
                    }
                }
            }
            Store::Redis(r) => r.admit(&key.name, &limits, now, window).await,
        };
        match counted {
            Ok(Ok((used, member))) => {
                metrics::ratelimit_store_up(true);
                Decision::Allowed(Grant {
                    headers: Some(RateHeaders::new(&limits, &used, reset)),
                    _slot: Some(Slot {
                        limiter: self.clone(),
                        key: key.name.clone(),
                        member,
                    }),
                })
            }
            Ok(Err((exceeded, used))) => {
                metrics::ratelimit_store_up(true);
                // Concurrency frees up as requests end, not with the window:
                // come back in a second.
                let retry_after = match exceeded {
                    Exceeded::Concurrency => Duration::from_secs(1),
                    _ => reset,
                };
                Decision::Limited {
                    exceeded,
                    retry_after,
                    headers: RateHeaders::new(&limits, &used, reset),
                }
            }
            Err(e) => {
                metrics::ratelimit_store_up(false);
                let decision = if self.fail_open { "allowed" } else { "refused" };
                metrics::ratelimit_store_error(decision);
                tracing::warn!(key = %key.name, error = %e, decision, "rate-limit store unreachable");
                if self.fail_open {
                    Decision::Allowed(Grant {
                        headers: None,
                        _slot: None,
                    })
                } else {
                    Decision::Unavailable
                }
            }
        }
    }

    /// Count `n` tokens against `key` in the current window.
    pub fn add_tokens(&self, key: &str, n: u64) {
        self.add_tokens_at(key, n, now_ms());
    }

    pub fn add_tokens_at(&self, key: &str, n: u64, now: u64) {
        if n == 0 {
            return;
        }
        let (window, _) = window::window_of(now);
        match &self.store {
            Store::Local(counts) => {
                let mut counts = counts.lock().unwrap_or_else(|p| p.into_inner());
                let c = counts.entry(key.to_owned()).or_default();
                c.roll(window);
                c.tokens = c.tokens.saturating_add(n);
            }
            Store::Redis(r) => r.add_tokens(key, n, window),
        }
    }

    fn release(&self, key: &str, member: Option<String>) {
        match &self.store {
            Store::Local(counts) => {
                let mut counts = counts.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(c) = counts.get_mut(key) {
                    c.in_flight = c.in_flight.saturating_sub(1);
                }
            }
            Store::Redis(r) => {
                if let Some(m) = member {
                    r.release(key, m);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeySet;

    fn key(rpm: u64, tpm: u64, concurrency: u64) -> ClientKey {
        let text = format!(
            "[[key]]\nname = \"k\"\nsha256 = \"{}\"\nrpm = {rpm}\ntpm = {tpm}\nmax_concurrent = {concurrency}\n",
            crate::keys::hash_hex("sk")
        );
        KeySet::parse("t", &text)
            .unwrap()
            .identify("sk")
            .unwrap()
            .clone()
    }

    fn local() -> Arc<Limiter> {
        Limiter::new(
            &RateLimitSection {
                redis: None,
                fail_open: true,
                timeout: Duration::from_millis(100),
            },
            Duration::from_secs(600),
        )
        .unwrap()
    }

    /// A moment in the middle of a window.
    const NOW: u64 = 1_800_000_030_000;

    #[tokio::test]
    async fn concurrency_is_given_back_when_a_request_ends() {
        let l = local();
        let k = key(0, 0, 1);
        let first = match l.admit_at(&k, NOW).await {
            Decision::Allowed(g) => g,
            _ => panic!("the first fits"),
        };
        assert!(matches!(
            l.admit_at(&k, NOW).await,
            Decision::Limited {
                exceeded: Exceeded::Concurrency,
                ..
            }
        ));
        drop(first);
        assert!(matches!(l.admit_at(&k, NOW).await, Decision::Allowed(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_place_given_back_meanwhile_is_waited_for() {
        let l = local();
        let k = key(0, 0, 1);
        let first = match l.admit(&k).await {
            Decision::Allowed(g) => g,
            _ => panic!("the first fits"),
        };
        // Given back while the second waits: it gets the place.
        let second = tokio::spawn({
            let l = l.clone();
            let k = k.clone();
            async move { matches!(l.admit(&k).await, Decision::Allowed(_)) }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        drop(first);
        assert!(second.await.unwrap(), "admitted once the place came back");
        // Not given back within the wait: 429.
        let _held = l.admit(&k).await;
        assert!(matches!(
            l.admit(&k).await,
            Decision::Limited {
                exceeded: Exceeded::Concurrency,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn requests_and_tokens_per_window() {
        let l = local();
        let k = key(2, 0, 0);
        for _ in 0..2 {
            assert!(matches!(l.admit_at(&k, NOW).await, Decision::Allowed(_)));
        }
        match l.admit_at(&k, NOW).await {
            Decision::Limited {
                exceeded,
                retry_after,
                headers,
            } => {
                assert_eq!(exceeded, Exceeded::Requests);
                assert_eq!(retry_after, Duration::from_secs(30));
                assert_eq!(headers.requests, Some((2, 0)));
            }
            _ => panic!("the third is over rpm"),
        }
        // The next window starts over.
        assert!(matches!(
            l.admit_at(&k, NOW + 30_000).await,
            Decision::Allowed(_)
        ));
        let k = key(0, 100, 0);
        assert!(matches!(l.admit_at(&k, NOW).await, Decision::Allowed(_)));
        l.add_tokens_at("k", 100, NOW);
        assert!(matches!(
            l.admit_at(&k, NOW).await,
            Decision::Limited {
                exceeded: Exceeded::Tokens,
                ..
            }
        ));
    }
}
