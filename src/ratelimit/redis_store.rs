//! Per-key counters in Redis, shared by every gateway that points at it.
//! One Lua script reads the key's use of the window and counts the request
//! atomically, so concurrent gateways never both take the last place.
//!
//! Keys (hash-tagged by the client key's name, so a cluster keeps them
//! together): `ballast:{name}:r:<window>` requests and `…:t:<window>`
//! tokens of a one-minute window, expiring after two; `ballast:{name}:c`
//! the requests in flight, a sorted set scored by start time so that those
//! of a gateway that died age out after the longest route deadline.

use super::window::{Exceeded, Usage, WINDOW_MS};
use crate::keys::KeyLimits;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

const ADMIT: &str = r"
local rpm, tpm, conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now, stale, window_ms = tonumber(ARGV[4]), tonumber(ARGV[6]), tonumber(ARGV[7])
local reqs = tonumber(redis.call('GET', KEYS[1]) or '0')
local toks = tonumber(redis.call('GET', KEYS[2]) or '0')
local inflight = 0
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - stale)
  inflight = redis.call('ZCARD', KEYS[3])
end
if rpm > 0 and reqs >= rpm then return {1, reqs, toks, inflight} end
if tpm > 0 and toks >= tpm then return {2, reqs, toks, inflight} end
if conc > 0 and inflight >= conc then return {3, reqs, toks, inflight} end
redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], 2 * window_ms)
if conc > 0 then
  redis.call('ZADD', KEYS[3], now, ARGV[5])
  redis.call('PEXPIRE', KEYS[3], stale)
end
return {0, reqs + 1, toks, inflight + 1}
";

pub struct RedisStore {
    client: redis::Client,
    /// Connected on first use (the gateway starts whether Redis is up or
    /// not); it reconnects by itself after that.
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    admit: redis::Script,
    timeout: Duration,
    stale: Duration,
    /// Tells this gateway's members of the in-flight sets apart.
    instance: String,
}

/// Counted (with the use after it, and its in-flight member), or over a
/// limit (with the use before it); `Err`: Redis could not answer in time.
pub type Counted = Result<Result<(Usage, Option<String>), (Exceeded, Usage)>, String>;

fn key(name: &str, what: &str) -> String {
    format!("ballast:{{{name}}}:{what}")
}

impl RedisStore {
    pub fn new(url: &str, timeout: Duration, stale: Duration) -> anyhow::Result<RedisStore> {
        // The URL may hold a password: the error says what is wrong with
        // it, not what it is.
        let client = redis::Client::open(url).map_err(|e| {
            anyhow::anyhow!(
                "ratelimit.redis is not a usable Redis URL: {}",
                e.category()
            )
        })?;
        Ok(RedisStore {
            client,
            conn: tokio::sync::Mutex::new(None),
            admit: redis::Script::new(ADMIT),
            timeout,
            stale,
            instance: format!("{:016x}", rand::random::<u64>()),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, String> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = conn.as_ref() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
            .set_number_of_retries(1)
            .set_max_delay(1000);
        let made = tokio::time::timeout(
            self.timeout,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| "connecting timed out".to_string())?
        .map_err(|e| format!("connecting failed: {}", e.category()))?;
        *conn = Some(made.clone());
        Ok(made)
    }

    pub async fn admit(&self, name: &str, limits: &KeyLimits, now_ms: u64, window: u64) -> Counted {
        let member = format!("{}:{:016x}", self.instance, rand::random::<u64>());
        let mut conn = self.connection().await?;
        let mut call = self.admit.prepare_invoke();
        call.key(key(name, &format!("r:{window}")))
            .key(key(name, &format!("t:{window}")))
            .key(key(name, "c"))
            .arg(limits.rpm)
            .arg(limits.tpm)
            .arg(limits.concurrency)
            .arg(now_ms)
            .arg(&member)
            .arg(self.stale.as_millis() as u64)
            .arg(WINDOW_MS);
        let answer: Vec<u64> = tokio::time::timeout(self.timeout, call.invoke_async(&mut conn))
            .await
            .map_err(|_| "no answer in time".to_string())?
            .map_err(|e| format!("the admit script failed: {}", e.category()))?;
        let [code, requests, tokens, in_flight] = answer[..] else {
            return Err(format!("the admit script answered {answer:?}"));
        };
        let used = Usage {
            requests,
            tokens,
            in_flight,
        };
        Ok(match code {
            0 => Ok((used, (limits.concurrency > 0).then_some(member))),
            1 => Err((Exceeded::Requests, used)),
            2 => Err((Exceeded::Tokens, used)),
            _ => Err((Exceeded::Concurrency, used)),
        })
    }

    /// Count tokens in the background (a failure is logged and counted,
    /// never felt by the request).
    pub fn add_tokens(&self, name: &str, n: u64, window: u64) {
        let k = key(name, &format!("t:{window}"));
        self.spawn(move |mut conn| async move {
            redis::pipe()
                .atomic()
                .incr(&k, n)
                .ignore()
                .pexpire(&k, (2 * WINDOW_MS) as i64)
                .ignore()
                .query_async::<()>(&mut conn)
                .await
        });
    }

    /// Give a request's place in flight back.
    pub fn release(&self, name: &str, member: String) {
        let k = key(name, "c");
        self.spawn(move |mut conn| async move {
            redis::cmd("ZREM")
                .arg(&k)
                .arg(&member)
                .query_async::<()>(&mut conn)
                .await
        });
    }

    fn spawn<F, Fut>(&self, op: F)
    where
        F: FnOnce(ConnectionManager) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = redis::RedisResult<()>> + Send,
    {
        let Ok(guard) = self.conn.try_lock() else {
            // Someone is connecting right now: nothing to write to yet.
            crate::metrics::ratelimit_store_error("dropped");
            return;
        };
        let Some(conn) = guard.clone() else {
            crate::metrics::ratelimit_store_error("dropped");
            return;
        };
        drop(guard);
        let timeout = self.timeout;
        tokio::spawn(async move {
            match tokio::time::timeout(timeout * 10, op(conn)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    crate::metrics::ratelimit_store_error("dropped");
                    tracing::warn!(error = %e.category(), "rate-limit store: an update was lost");
                }
                Err(_) => {
                    crate::metrics::ratelimit_store_error("dropped");
                    tracing::warn!("rate-limit store: an update timed out");
                }
            }
        });
    }
}
