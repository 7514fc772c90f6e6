//! The TOML shape users write, exactly as serde reads it.
//!
//! Every struct denies unknown keys, every key is optional (defaults are applied
//! in `validate`, which also reports missing required keys such as
//! `pool.servers` and `route.pool`), and every leaf keeps its source span so a
//! problem found after deserialisation can name its line and column.
//!
//! Values that need checking (durations, sizes, ranges) are kept loose here —
//! strings and `i64`s — so that `validate` can report every bad value at once
//! instead of serde stopping at the first.
//!
//! Sub-tables (`[pool.health]`, `[route.retry]`, …) are deliberately not wrapped
//! in `Spanned`: a table written with dotted keys (`health.rise = 2`) has no
//! span and `Spanned` would refuse it.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

/// An optional key with its source location.
pub(crate) type Opt<T> = Option<Spanned<T>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub pool: Vec<Spanned<RawPool>>,
    #[serde(default)]
    pub route: Vec<Spanned<RawRoute>>,
    pub auth: Option<RawAuth>,
    #[serde(default)]
    pub ratelimit: RawRateLimit,
    pub jobs: Option<RawJobs>,
    #[serde(default)]
    pub amqp: Vec<Spanned<RawAmqp>>,
}

/// `[[amqp]]`: a RabbitMQ queue whose messages are requests.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAmqp {
    pub name: Opt<String>,
    pub url: Opt<String>,
    pub url_env: Opt<String>,
    pub ca_file: Opt<String>,
    pub queue: Opt<String>,
    pub path: Opt<String>,
    pub declare: Opt<bool>,
    pub dead_letter_exchange: Opt<String>,
    pub prefetch: Opt<i64>,
    pub max_reply_bytes: Opt<StrOrInt>,
    pub max_attempts: Opt<i64>,
    pub backoff: Opt<String>,
    pub backoff_max: Opt<String>,
}

/// `[jobs]`: the durable store of asynchronous jobs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJobs {
    pub dir: Opt<String>,
    pub max_queued: Opt<i64>,
    pub max_result_bytes: Opt<StrOrInt>,
    pub workers: Opt<i64>,
    pub callback_hosts: Option<Vec<Spanned<String>>>,
    pub callback_secret_env: Opt<String>,
}

/// `[route.jobs]`: the route takes `Prefer: respond-async` requests as jobs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRouteJobs {
    pub enabled: Opt<bool>,
    pub max_attempts: Opt<i64>,
    pub backoff: Opt<String>,
    pub backoff_max: Opt<String>,
    pub ttl: Opt<String>,
    pub retention: Opt<String>,
}

/// `[auth]`: where the client keys are.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuth {
    pub keys_file: Opt<String>,
    pub keys_env: Opt<String>,
}

/// `[ratelimit]`: where per-key counters live.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    pub redis: Opt<String>,
    pub fail_open: Opt<bool>,
    pub timeout: Opt<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub listen: Opt<Vec<Spanned<String>>>,
    pub threads: Opt<i64>,
    /// Extension: how long a graceful shutdown waits for requests in flight.
    pub grace_period: Opt<String>,
    pub drain_delay: Opt<String>,
    pub upgrade_sock: Opt<String>,
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    /// TLS on every client listener.
    pub tls: Option<RawListenerTls>,
    pub resolver: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListenerTls {
    pub cert: Opt<String>,
    pub key: Opt<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub listen: Opt<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub max_request_body: Opt<StrOrInt>,
    pub max_header_bytes: Opt<StrOrInt>,
    pub header_timeout: Opt<String>,
    pub max_decompression_ratio: Opt<i64>,
    pub body_timeout: Opt<String>,
    pub keepalive_idle: Opt<String>,
    pub max_connections: Opt<i64>,
    pub max_buffered_bytes: Opt<StrOrInt>,
}

/// Extension: logging output.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    pub format: Opt<String>,
    pub level: Opt<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPool {
    pub name: Opt<String>,
    pub max_fails: Opt<i64>,
    pub fail_timeout: Opt<String>,
    pub max_conns: Opt<i64>,
    pub host: Opt<String>,
    pub tls: Opt<bool>,
    pub sni: Opt<String>,
    pub ca_file: Opt<String>,
    pub client_cert: Opt<String>,
    pub client_key: Opt<String>,
    pub http2: Opt<String>,
    pub api_key_env: Opt<String>,
    pub api_key_header: Opt<String>,
    pub resolve_interval: Opt<String>,
    pub balance: Opt<String>,
    pub continuation: Opt<String>,
    pub probe_interval: Opt<String>,
    pub affinity_header: Opt<String>,
    pub affinity: Option<RawAffinity>,
    pub load_metrics: Option<RawLoadMetrics>,
    pub health: Option<RawHealth>,
    pub queue: Option<RawQueue>,
    pub servers: Opt<Vec<Spanned<RawUpstream>>>,
}

/// `[pool.load_metrics]`: load the servers report on their own metrics
/// endpoint.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLoadMetrics {
    pub path: Opt<String>,
    pub interval: Opt<String>,
    pub max_age: Opt<String>,
    pub running: Opt<String>,
    pub waiting: Opt<String>,
    pub kv_usage: Opt<String>,
}

/// `[pool.affinity]`: how `balance = "prefix_affinity"` weighs a cached
/// prefix against load.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAffinity {
    pub min_match: Opt<f64>,
    pub balance_abs: Opt<i64>,
    pub balance_rel: Opt<f64>,
    pub entries: Opt<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    pub path: Opt<String>,
    pub interval: Opt<String>,
    pub timeout: Opt<String>,
    pub rise: Opt<i64>,
    pub fall: Opt<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawQueue {
    pub max_depth: Opt<i64>,
    pub max_wait: Opt<String>,
}

/// One `[[pool.servers]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    pub addr: Opt<String>,
    pub weight: Opt<i64>,
    pub max_conns: Opt<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub name: Opt<String>,
    pub path_prefix: Opt<String>,
    pub models: Option<Vec<Spanned<String>>>,
    pub pool: Opt<String>,
    pub fallback: Option<Vec<Spanned<RawFallback>>>,
    pub openai: Opt<bool>,
    pub priority: Opt<String>,
    pub max_tokens_limit: Opt<i64>,
    pub stream_include_usage: Opt<bool>,
    pub priority_header: Opt<String>,
    pub upgrades: Option<Vec<Spanned<String>>>,
    pub require_key: Opt<bool>,
    pub resume: Option<RawResume>,
    pub jobs: Option<RawRouteJobs>,
    pub retry: Option<RawRetry>,
    pub timeouts: Option<RawTimeouts>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFallback {
    pub pool: Opt<String>,
    pub model: Opt<String>,
    pub on: Option<Vec<Spanned<String>>>,
}

/// `[route.resume]`: cut streams continued on another server.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawResume {
    pub enabled: Opt<bool>,
    pub max_resumes: Opt<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetry {
    pub attempts: Opt<i64>,
    pub on: Option<Vec<Spanned<StrOrInt>>>,
    pub backoff_base: Opt<String>,
    pub backoff_max: Opt<String>,
    pub jitter: Opt<f64>,
    pub budget: Opt<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTimeouts {
    pub connect: Opt<String>,
    pub first_byte: Opt<String>,
    pub stream_idle: Opt<String>,
    pub total: Opt<String>,
    pub websocket_idle: Opt<String>,
    pub client_write: Opt<String>,
}

/// A value users may write either as a string or as a bare integer: sizes
/// (`"16MiB"` or `16777216`) and retry conditions (`"429"` or `429`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StrOrInt {
    Str(String),
    Int(i64),
}

impl<'de> Deserialize<'de> for StrOrInt {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = StrOrInt;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StrOrInt, E> {
                Ok(StrOrInt::Str(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<StrOrInt, E> {
                Ok(StrOrInt::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<StrOrInt, E> {
                i64::try_from(v)
                    .map(StrOrInt::Int)
                    .map_err(|_| E::custom("integer is too large"))
            }
        }
        deserializer.deserialize_any(V)
    }
}
