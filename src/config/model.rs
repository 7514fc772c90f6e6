//! The validated configuration the gateway runs on. Never deserialised
//! directly: `config::load` builds it from the raw TOML shape after checking
//! every key, so code that holds a `Config` can trust every value in it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub server: ServerSection,
    pub admin: AdminSection,
    pub limits: Limits,
    pub log: LogSection,
    pub pools: Vec<PoolConfig>,
    pub routes: Vec<RouteConfig>,
    /// Client keys (`[auth]`), read when the config was loaded.
    pub auth: Option<AuthSection>,
    pub ratelimit: RateLimitSection,
    /// The job store (`[jobs]`), when any route takes jobs.
    pub jobs: Option<JobsSection>,
    /// RabbitMQ queues consumed as requests (`[[amqp]]`).
    pub amqp: Vec<AmqpConsumer>,
}

/// `[[amqp]]` (read at start: a change needs a restart).
#[derive(Debug, Clone, PartialEq)]
pub struct AmqpConsumer {
    /// Names it in metrics, logs and `/readyz` (default: the queue).
    pub name: String,
    /// `amqp://` or `amqps://`, with credentials: never logged.
    pub url: Secret,
    /// The broker's `host:port/vhost`, for logs (no credentials).
    pub broker: String,
    /// With `amqps`: more CAs (PEM) to trust besides the system's.
    pub ca_file: Option<PathBuf>,
    pub queue: String,
    /// The path of a message that names none.
    pub path: String,
    /// Declare the queue, the dead-letter exchange and its queue (else:
    /// check that they exist).
    pub declare: bool,
    pub dead_letter_exchange: String,
    /// Messages held at once, at most; the window follows free backend
    /// slots below it.
    pub prefetch: u16,
    /// A longer answer is not sent back: the message fails.
    pub max_reply_bytes: u64,
    /// Attempts for transient failures (`ttl` and `retention` do not apply:
    /// a message waits in RabbitMQ, and the reply is the result).
    pub policy: crate::jobs::record::Policy,
}

/// `[jobs]` (read at start: a change needs a restart).
#[derive(Debug, Clone, PartialEq)]
pub struct JobsSection {
    pub dir: PathBuf,
    /// Jobs queued or running at most; beyond: 503 with Retry-After.
    pub max_queued: u64,
    /// A backend answer longer than this fails the job.
    pub max_result_bytes: u64,
    /// Jobs run at once, at most.
    pub workers: u32,
    /// Hosts (`host` or `host:port`) a job's callback may go to.
    pub callback_hosts: Vec<String>,
    /// The key callbacks are signed with (from `callback_secret_env`).
    pub callback_secret: Option<Secret>,
}

/// A secret read from the environment: never shown by `Debug`.
#[derive(Clone, PartialEq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuthSection {
    /// Where the keys came from (`keys_file` or `keys_env`), for messages.
    pub source: String,
    pub keys: std::sync::Arc<crate::keys::KeySet>,
}

#[derive(Clone, PartialEq)]
pub struct RateLimitSection {
    /// Counters shared by every gateway through this Redis; `None`: per
    /// process.
    pub redis: Option<String>,
    /// Redis unreachable: let requests through (true) or refuse them (503).
    pub fail_open: bool,
    /// Longest a Redis round trip may take before it counts as unreachable.
    pub timeout: Duration,
}

impl std::fmt::Debug for RateLimitSection {
    // The Redis URL may carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitSection")
            .field("redis", &self.redis.as_ref().map(|_| "…"))
            .field("fail_open", &self.fail_open)
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerSection {
    /// Client listeners, `host:port` (HTTP/1.1 and h2c).
    pub listen: Vec<String>,
    /// Worker threads; default: number of cores.
    pub threads: usize,
    /// How long a graceful shutdown waits for requests in flight (from
    /// when new connections are refused).
    pub grace_period: Duration,
    /// `SIGTERM`: `/readyz` 503 at once, new connections refused after this.
    pub drain_delay: Duration,
    /// Unix socket the listeners are handed over on in a binary upgrade.
    pub upgrade_sock: PathBuf,
    /// Peers whose forwarding headers are believed (and appended to).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// TLS on every client listener; checked (readable, matching, not
    /// expired) when the config was loaded.
    pub tls: Option<TlsFiles>,
    /// Name servers host names in `pool.servers.addr` are re-resolved
    /// with; empty: the system's (`/etc/resolv.conf`).
    pub resolver: Vec<SocketAddr>,
}

/// A certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Whether requests to a pool may use HTTP/2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Http2Mode {
    /// When the server offers it by ALPN (TLS pools); HTTP/1.1 otherwise.
    Auto,
    Never,
    /// Always: by ALPN over TLS, with prior knowledge (h2c) on plain pools.
    Always,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminSection {
    pub listen: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_request_body: u64,
    pub max_header_bytes: u64,
    /// The whole request head (first byte to blank line) must arrive in this.
    pub header_timeout: Duration,
    pub max_decompression_ratio: u64,
    /// The whole request body must arrive in this → 408.
    pub body_timeout: Duration,
    /// An idle client connection (between requests) is closed after this.
    pub keepalive_idle: Duration,
    /// Open client connections; more are refused with a 503 at once.
    pub max_connections: u32,
    /// Request bytes buffered across all connections; beyond → 503.
    pub max_buffered_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogSection {
    pub format: LogFormat,
    /// tracing-subscriber EnvFilter directive, e.g. "info" or "ballast=debug".
    pub level: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    pub max_fails: u32,
    pub fail_timeout: Duration,
    pub max_conns: u32,
    /// Value of the `Host` header sent upstream; `None` keeps the client's.
    pub host: Option<String>,
    pub tls: bool,
    /// Name the servers' certificates must carry; `None`: each server's host.
    pub sni: Option<String>,
    /// Private CA the servers' certificates are verified against; `None`:
    /// the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key for servers that ask for one (mTLS).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub http2: Http2Mode,
    /// Environment variable holding the pool's API key.
    pub api_key_env: Option<String>,
    /// Header the key is sent in (lowercase): `authorization` (the default)
    /// carries `Bearer <key>`, any other the key itself.
    pub api_key_header: http::HeaderName,
    /// How often host names in `servers` are looked up again (sooner when
    /// the record's TTL says so).
    pub resolve_interval: Duration,
    /// How a server is chosen.
    pub balance: Balance,
    /// How this pool's servers continue a cut stream (`none`: they don't).
    pub continuation: crate::openai::continuation::Dialect,
    /// Opt-in quick return after a passive ejection: a probe request
    /// after this, then after twice as long..., up to `fail_timeout`.
    pub probe_interval: Option<Duration>,
    /// A request header (lowercase) whose value pins a session to a
    /// server, hashed consistently over the usable ones.
    pub affinity_header: Option<http::HeaderName>,
    /// The overload escape of session affinity (and its settings, with
    /// `prefix_affinity`).
    pub affinity: AffinityConfig,
    /// Load read from the servers' own metrics, folded into selection.
    pub load_metrics: Option<LoadMetricsConfig>,
    pub health: Option<HealthConfig>,
    pub queue: QueueConfig,
    pub servers: Vec<ServerConfig>,
}

/// Where and how often a pool's servers are asked for their load, and
/// under which metric names (vLLM's by default).
#[derive(Debug, Clone, PartialEq)]
pub struct LoadMetricsConfig {
    pub path: String,
    pub interval: Duration,
    /// A report older than this is ignored.
    pub max_age: Duration,
    /// Requests the server is running (its own count, ours included).
    pub running: String,
    /// Requests waiting in the server's queue.
    pub waiting: String,
    /// KV-cache usage (0–1), shown in `/status`.
    pub kv_usage: String,
}

/// How a pool chooses among its usable servers.
#[derive(Debug, Clone, PartialEq)]
pub enum Balance {
    /// The lowest `outstanding / weight`.
    LeastOutstanding,
    /// The server that last served the longest prefix of the prompt, unless
    /// it is overloaded; else least outstanding.
    PrefixAffinity(AffinityConfig),
}

#[derive(Debug, Clone, PartialEq)]
pub struct AffinityConfig {
    /// Share of the prompt's blocks a cached prefix must cover to count.
    pub min_match: f64,
    /// The preferred server is overloaded when its load exceeds the least
    /// loaded server's by more than `balance_abs` requests **and** by more
    /// than a factor `balance_rel`.
    pub balance_abs: u32,
    pub balance_rel: f64,
    /// Prompt blocks remembered (LRU).
    pub entries: usize,
}

impl Default for AffinityConfig {
    fn default() -> Self {
        AffinityConfig {
            min_match: 0.5,
            balance_abs: 4,
            balance_rel: 1.5,
            entries: 65_536,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueueConfig {
    pub max_depth: u32,
    pub max_wait: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// `host:port` as written.
    pub addr: String,
    /// The host part of `addr` (a name, or an IP address without brackets):
    /// the default TLS server name.
    pub host: String,
    pub port: u16,
    /// `host` is a name (re-resolved while running), not an IP address.
    pub is_name: bool,
    /// Every address it resolved to when the config was loaded (IPv4 if
    /// it has any, else IPv6); each is a member of the pool. Empty for a
    /// name left to `server.resolver`.
    pub resolved: Vec<SocketAddr>,
    pub weight: u32,
    /// Cap on outstanding requests; 0 = none. Already merged with the pool default.
    pub max_conns: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub name: String,
    pub path_prefix: String,
    pub models: Vec<String>,
    /// Index into `Config::pools`.
    pub pool: usize,
    pub fallback: Vec<Fallback>,
    pub openai: bool,
    /// OpenAI normalisation (with `openai = true`): clamp `max_tokens` /
    /// `max_completion_tokens` to this.
    pub max_tokens_limit: Option<u64>,
    /// OpenAI normalisation: ask streams for a final usage chunk
    /// (`stream_options.include_usage`) unless the client said.
    pub stream_include_usage: bool,
    /// Queue priority of this route's requests.
    pub priority: Priority,
    /// Header a client may use to set its own priority (`high`, `normal`,
    /// `low`); `None`: the route's priority always applies.
    pub priority_header: Option<http::HeaderName>,
    /// Protocols a client may switch to (`Upgrade:`), lowercase; any other
    /// `Upgrade` is removed and the request served as an ordinary one.
    pub upgrades: Vec<String>,
    /// Clients must present a key of `[auth]`.
    pub require_key: bool,
    /// Cut streams are resumed on another server (`[route.resume]`).
    pub resume: Option<ResumeConfig>,
    /// `Prefer: respond-async` requests become jobs (`[route.jobs]`).
    pub jobs: Option<crate::jobs::record::Policy>,
    pub retry: RetryConfig,
    pub timeouts: Timeouts,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Fallback {
    /// Index into `Config::pools`.
    pub pool: usize,
    pub model: Option<String>,
    /// What sends a request here (`on`).
    pub on: FallbackOn,
}

/// Why a request may move to a fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FallbackOn {
    /// The pools before could not serve it (no usable server, busy,
    /// failing): the default.
    pub unavailable: bool,
    /// A server answered that the prompt exceeds its model's context.
    pub context_length: bool,
}

impl Default for FallbackOn {
    fn default() -> Self {
        FallbackOn {
            unavailable: true,
            context_length: false,
        }
    }
}

/// `[route.resume]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeConfig {
    /// Most times one stream is resumed.
    pub max_resumes: u32,
}

/// Order of service in a pool's queue: higher first, FIFO within a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    Low,
    Normal,
    High,
}

impl Priority {
    pub fn parse(s: &str) -> Option<Priority> {
        match s.trim().to_ascii_lowercase().as_str() {
            "low" => Some(Priority::Low),
            "normal" => Some(Priority::Normal),
            "high" => Some(Priority::High),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
        }
    }
}

/// What a failed or busy attempt turned out to be; `route.retry.on` lists these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryOn {
    ConnectError,
    Timeout,
    Reset,
    Status(u16),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    pub attempts: u32,
    pub on: Vec<RetryOn>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub jitter: f64,
    pub budget: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub stream_idle: Duration,
    pub total: Duration,
    pub websocket_idle: Duration,
    /// No progress writing to the client for this long ends the response.
    pub client_write: Duration,
}
