//! Every metric Ballast exports, defined in one place (names and labels are
//! a public interface: DESIGN.md "Metrics"). Registered in the `prometheus`
//! crate's default registry (Pingora 0.9 no longer links `prometheus`, so
//! the version is ours to choose: 0.14, text exposition only).

use prometheus::{
    register_gauge_vec, register_histogram_vec, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, GaugeVec, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
};
use std::borrow::Cow;
use std::sync::LazyLock;

/// Buckets for whole requests and time to first byte: model calls range from
/// milliseconds (cached, short) to minutes (long generations).
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

// Registration only fails on a duplicate or malformed name: a programming
// error caught by every test run, so a panic at start-up is the right answer.
static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ballast_requests_total",
        "Client requests answered, by route and status",
        &["route", "status"]
    )
    .expect("metric ballast_requests_total registers")
});

static REQUEST_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "ballast_request_duration_seconds",
        "Time from request head to the end of the response, by route and whether it was streamed \
         (an event stream or an upgraded connection, whose duration is the whole stream)",
        &["route", "streamed"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric ballast_request_duration_seconds registers")
});

static RESPONSE_FIRST_BYTE: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "ballast_response_first_byte_seconds",
        "Time from request head to the response reaching the client (its head and first body \
         bytes: queueing, retries and fallbacks included), by route and whether it was streamed",
        &["route", "streamed"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric ballast_response_first_byte_seconds registers")
});

static FIRST_BYTE: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "ballast_upstream_first_byte_seconds",
        "Time from sending an attempt to its first response body byte, by pool",
        &["pool"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric ballast_upstream_first_byte_seconds registers")
});

static ATTEMPTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ballast_upstream_attempts_total",
        "Upstream attempts by pool, server and outcome (status code, connect_error, timeout, reset)",
        &["pool", "server", "outcome"]
    )
    .expect("metric ballast_upstream_attempts_total registers")
});

static OUTSTANDING: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "ballast_upstream_outstanding",
        "Requests in flight to each server from this gateway",
        &["pool", "server"]
    )
    .expect("metric ballast_upstream_outstanding registers")
});

static UP: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "ballast_upstream_up",
        "1 if the server can take requests, 0 if down (health) or ejected (max_fails)",
        &["pool", "server"]
    )
    .expect("metric ballast_upstream_up registers")
});

static EJECTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ballast_upstream_ejections_total",
        "Times a server was passively ejected after max_fails failures",
        &["pool", "server"]
    )
    .expect("metric ballast_upstream_ejections_total registers")
});

static RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ballast_retries_total",
        "Retries by route and the outcome that caused them; reason=\"budget_exhausted\" counts retries the retry budget refused",
        &["route", "reason"]
    )
    .expect("metric ballast_retries_total registers")
});

static COOLDOWN: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "ballast_upstream_cooldown_seconds",
        "Seconds left in a server's Retry-After cooldown (0: not cooling)",
        &["pool", "server"]
    )
    .expect("metric ballast_upstream_cooldown_seconds registers")
});

static STREAMS_ACTIVE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "ballast_streams_active",
        "Open event streams (sse) and spliced upgraded connections (websocket)",
        &["kind"]
    )
    .expect("metric ballast_streams_active registers")
});

static CLIENT_CONNECTIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "ballast_client_connections",
        "Open client connections (limits.max_connections caps them)"
    )
    .expect("metric ballast_client_connections registers")
});

static CONNECTIONS_REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ballast_connections_refused_total",
        "Client connections refused before a request was read, by reason",
        &["reason"]
    )
    .expect("metric ballast_connections_refused_total registers")
});

static BUFFERED_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "ballast_buffered_request_bytes",
        "Request body bytes held across all connections (limits.max_buffered_bytes caps them)"
    )
    .expect("metric ballast_buffered_request_bytes registers")
});

pub fn buffered_bytes(delta: i64) {
    BUFFERED_BYTES.add(delta);
}

pub fn client_connections(delta: i64) {
    CLIENT_CONNECTIONS.add(delta);
}

static TLS_CERT_EXPIRY: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "ballast_tls_cert_expiry_timestamp_seconds",
        "When the certificate served on a TLS listener expires (Unix time)",
        &["listener"]
    )
    .expect("metric ballast_tls_cert_expiry_timestamp_seconds registers")
});

static CONFIG_RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ballast_config_reloads_total",
        "Config reloads (SIGHUP, POST /reload) by result: ok, error (nothing changed)",
        &["result"]
    )
    .expect("metric ballast_config_reloads_total registers")
});

pub fn config_reload(result: &str) {
    CONFIG_RELOADS.with_label_values(&[result]).inc();
}

static DNS_RESOLUTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ballast_dns_resolutions_total",
        "Lookups of host names in pool.servers.addr, by pool and result (ok, error)",
        &["pool", "result"]
    )
    .expect("metric ballast_dns_resolutions_total registers")
});

pub fn dns_resolution(pool: &str, result: &str) {
    DNS_RESOLUTIONS.with_label_values(&[pool, result]).inc();
}

/// Remove every series of a server that left its pool.
pub fn remove_server(pool: &str, server: &str) {
    let _ = OUTSTANDING.remove_label_values(&[pool, server]);
    let _ = UP.remove_label_values(&[pool, server]);
    let _ = COOLDOWN.remove_label_values(&[pool, server]);
    let _ = EJECTIONS.remove_label_values(&[pool, server]);
    // Attempts also carry an outcome: remove each one recorded.
    use prometheus::core::Collector;
    for family in ATTEMPTS.collect() {
        for m in family.get_metric() {
            let labels: std::collections::HashMap<&str, &str> = m
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            if labels.get("pool") == Some(&pool) && labels.get("server") == Some(&server) {
                let _ = ATTEMPTS.remove(&labels);
            }
        }
    }
}

pub fn tls_cert_expiry(listener: &str, unix_seconds: i64) {
    TLS_CERT_EXPIRY
        .with_label_values(&[listener])
        .set(unix_seconds);
}

pub fn connection_refused(reason: &str) {
    CONNECTIONS_REFUSED.with_label_values(&[reason]).inc();
}

static STREAM_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "ballast_stream_duration_seconds",
        "How long event streams and WebSocket connections stayed open",
        &["kind"],
        vec![0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0, 86400.0]
    )
    .expect("metric ballast_stream_duration_seconds registers")
});

static STREAM_ABORTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ballast_stream_aborts_total",
        "Responses cut off after bytes reached the client, by reason",
        &["reason"]
    )
    .expect("metric ballast_stream_aborts_total registers")
});

static STREAM_RESUMES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ballast_stream_resumes_total",
        "Streams cut after bytes reached the client, by the pool that cut them and \
         what came of resuming them: resumed, refused (the continuation was not a stream), \
         failed (no server could continue), or why it was not tried (limit, deadline, \
         tool_call, multi_choice, reasoning, unreadable, finished)",
        &["pool", "result"]
    )
    .expect("metric ballast_stream_resumes_total registers")
});

static CONTEXT_FALLBACKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ballast_context_fallbacks_total",
        "Requests moved to a fallback with a longer context after a server said the prompt was too long",
        &["route"]
    )
    .expect("metric ballast_context_fallbacks_total registers")
});

static JOBS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "ballast_jobs",
        "Asynchronous jobs not finished, by state (queued, running)",
        &["state"]
    )
    .expect("metric ballast_jobs registers")
});

static JOBS_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ballast_jobs_total",
        "Asynchronous jobs finished, by route and result (succeeded, failed, cancelled, expired)",
        &["route", "result"]
    )
    .expect("metric ballast_jobs_total registers")
});

static JOB_WAIT: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "ballast_job_wait_seconds",
        "From a job's submission to its first start",
        &["route"],
        vec![0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0]
    )
    .expect("metric ballast_job_wait_seconds registers")
});

static JOB_RUN: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "ballast_job_run_seconds",
        "How long one run of a job took",
        &["route"],
        vec![0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0]
    )
    .expect("metric ballast_job_run_seconds registers")
});

static QUEUE_DEPTH: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "ballast_queue_depth",
        "Requests waiting in a pool's queue for a server under max_conns",
        &["pool"]
    )
    .expect("metric ballast_queue_depth registers")
});

static QUEUE_WAIT: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "ballast_queue_wait_seconds",
        "Time a request waited in a pool's queue before it got a server",
        &["pool"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric ballast_queue_wait_seconds registers")
});

static SHED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ballast_shed_total",
        "Requests turned away by a pool: queue_full, queue_timeout, evicted (by higher priority)",
        &["pool", "reason"]
    )
    .expect("metric ballast_shed_total registers")
});

static BODY_BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ballast_request_body_bytes_total",
        "Request body bytes by content encoding, as received (wire) and after decoding (decoded)",
        &["encoding", "stage"]
    )
    .expect("metric ballast_request_body_bytes_total registers")
});

pub fn body_bytes(encoding: &str, stage: &str, n: usize) {
    BODY_BYTES
        .with_label_values(&[encoding, stage])
        .inc_by(n as u64);
}

pub fn queue_depth(pool: &str, depth: usize) {
    QUEUE_DEPTH
        .with_label_values(&[pool])
        .set(i64::try_from(depth).unwrap_or(i64::MAX));
}

pub fn queue_wait(pool: &str, seconds: f64) {
    QUEUE_WAIT.with_label_values(&[pool]).observe(seconds);
}

pub fn shed(pool: &str, reason: &str) {
    SHED.with_label_values(&[pool, reason]).inc();
}

/// Counts one open stream in `ballast_streams_active` while it lives.
pub struct ActiveStream(&'static str);

impl ActiveStream {
    pub fn new(kind: &'static str) -> Self {
        STREAMS_ACTIVE.with_label_values(&[kind]).inc();
        ActiveStream(kind)
    }
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        STREAMS_ACTIVE.with_label_values(&[self.0]).dec();
    }
}

pub fn stream_done(kind: &str, seconds: f64) {
    STREAM_DURATION.with_label_values(&[kind]).observe(seconds);
}

pub fn stream_abort(reason: &str) {
    STREAM_ABORTS.with_label_values(&[reason]).inc();
}

/// A pool that can continue cut streams: its outcomes at zero from the start.
pub fn register_resumes(pool: &str) {
    for result in ["resumed", "refused", "failed"] {
        STREAM_RESUMES.with_label_values(&[pool, result]);
    }
}

pub fn stream_resume(pool: &str, result: &str) {
    STREAM_RESUMES.with_label_values(&[pool, result]).inc();
}

pub fn jobs_in_state(state: &str, n: usize) {
    JOBS.with_label_values(&[state])
        .set(i64::try_from(n).unwrap_or(i64::MAX));
}

/// A route that takes jobs: its series at zero from the start.
pub fn register_job_route(route: &str) {
    for result in ["succeeded", "failed", "cancelled", "expired"] {
        JOBS_TOTAL.with_label_values(&[route, result]);
    }
    JOB_WAIT.with_label_values(&[route]);
    JOB_RUN.with_label_values(&[route]);
}

pub fn job_done(route: &str, result: &str) {
    JOBS_TOTAL.with_label_values(&[route, result]).inc();
}

pub fn job_wait(route: &str, seconds: f64) {
    JOB_WAIT.with_label_values(&[route]).observe(seconds);
}

pub fn job_run(route: &str, seconds: f64) {
    JOB_RUN.with_label_values(&[route]).observe(seconds);
}

static AMQP_CONNECTED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "ballast_amqp_connected",
        "1 while an [[amqp]] consumer is connected to its broker and consuming, else 0",
        &["consumer"]
    )
    .expect("metric ballast_amqp_connected registers")
});

static AMQP_PREFETCH: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "ballast_amqp_prefetch",
        "Messages an [[amqp]] consumer lets the broker send it unacknowledged (basic.qos), \
         following free backend slots",
        &["consumer"]
    )
    .expect("metric ballast_amqp_prefetch registers")
});

static AMQP_MESSAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ballast_amqp_messages_total",
        "Messages an [[amqp]] consumer settled: succeeded (replied, acked), refused (the \
         backend's 4xx replied and dead-lettered), failed (retries spent or no answer: \
         dead-lettered), invalid (not a request: dead-lettered)",
        &["consumer", "result"]
    )
    .expect("metric ballast_amqp_messages_total registers")
});

static AMQP_DISCONNECTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ballast_amqp_disconnects_total",
        "Times an [[amqp]] consumer lost (or could not make) its broker connection",
        &["consumer"]
    )
    .expect("metric ballast_amqp_disconnects_total registers")
});

/// A consumer's series, at zero from the start.
pub fn register_amqp(consumer: &str) {
    AMQP_CONNECTED.with_label_values(&[consumer]).set(0);
    AMQP_PREFETCH.with_label_values(&[consumer]).set(0);
    AMQP_DISCONNECTS.with_label_values(&[consumer]);
    for result in ["succeeded", "refused", "failed", "invalid"] {
        AMQP_MESSAGES.with_label_values(&[consumer, result]);
    }
}

/// `lost`: the connection went (or could not be made).
pub fn amqp_connected(consumer: &str, connected: bool, lost: bool) {
    AMQP_CONNECTED
        .with_label_values(&[consumer])
        .set(i64::from(connected));
    if lost {
        AMQP_DISCONNECTS.with_label_values(&[consumer]).inc();
    }
}

pub fn amqp_prefetch(consumer: &str, window: u16) {
    AMQP_PREFETCH
        .with_label_values(&[consumer])
        .set(i64::from(window));
}

pub fn amqp_message(consumer: &str, result: &str) {
    AMQP_MESSAGES.with_label_values(&[consumer, result]).inc();
}

pub fn context_fallback(route: &str) {
    CONTEXT_FALLBACKS.with_label_values(&[route]).inc();
}

static KEY_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ballast_key_requests_total",
        "Requests admitted per client key (by its name)",
        &["key"]
    )
    .expect("metric ballast_key_requests_total registers")
});

static KEY_TOKENS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ballast_key_tokens_total",
        "Tokens per client key: prompt (estimated at the edge) and completion (counted from answers)",
        &["key", "kind"]
    )
    .expect("metric ballast_key_tokens_total registers")
});

static KEY_REJECTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ballast_key_rejections_total",
        "Requests of a client key turned away: rpm, tpm, concurrency (429), route, model (403)",
        &["key", "reason"]
    )
    .expect("metric ballast_key_rejections_total registers")
});

static AUTH_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ballast_auth_failures_total",
        "Requests refused with 401: missing (no key presented) or invalid (not a known key)",
        &["reason"]
    )
    .expect("metric ballast_auth_failures_total registers")
});

static RATELIMIT_STORE_UP: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "ballast_ratelimit_store_up",
        "1 if the rate-limit counters (Redis with [ratelimit] redis) answered last time, 0 if not"
    )
    .expect("metric ballast_ratelimit_store_up registers")
});

static RATELIMIT_STORE_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ballast_ratelimit_store_errors_total",
        "Rate-limit store failures by what happened: allowed (fail_open), refused (503), dropped (a count was lost)",
        &["decision"]
    )
    .expect("metric ballast_ratelimit_store_errors_total registers")
});

static AFFINITY: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ballast_affinity_decisions_total",
        "Prefix affinity: hit (the server holding the prompt's prefix got it), miss (none holds enough), overloaded (it was too busy or unusable)",
        &["pool", "result"]
    )
    .expect("metric ballast_affinity_decisions_total registers")
});

static PREFIX_BLOCKS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "ballast_prefix_store_blocks",
        "Prompt blocks a prefix-affinity pool remembers (bounded by pool.affinity.entries)",
        &["pool"]
    )
    .expect("metric ballast_prefix_store_blocks registers")
});

/// An affinity pool's decisions, at zero from the start.
pub fn register_affinity(pool: &str) {
    for result in ["hit", "miss", "overloaded"] {
        AFFINITY.with_label_values(&[pool, result]);
    }
}

static LOAD_SCRAPES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "ballast_load_scrapes_total",
        "Scrapes of the servers' own metrics ([pool.load_metrics]): ok, missing (no load metric on the page), error",
        &["pool", "result"]
    )
    .expect("metric ballast_load_scrapes_total registers")
});

pub fn load_scrape(pool: &str, result: &str) {
    LOAD_SCRAPES.with_label_values(&[pool, result]).inc();
}

pub fn affinity_decision(pool: &str, result: &str) {
    AFFINITY.with_label_values(&[pool, result]).inc();
}

pub fn prefix_blocks(pool: &str, blocks: usize) {
    PREFIX_BLOCKS
        .with_label_values(&[pool])
        .set(i64::try_from(blocks).unwrap_or(i64::MAX));
}

pub fn key_request(key: &str) {
    KEY_REQUESTS.with_label_values(&[key]).inc();
}

pub fn key_tokens(key: &str, kind: &str, n: u64) {
    KEY_TOKENS.with_label_values(&[key, kind]).inc_by(n);
}

pub fn key_rejected(key: &str, reason: &str) {
    KEY_REJECTIONS.with_label_values(&[key, reason]).inc();
}

pub fn auth_failure(reason: &str) {
    AUTH_FAILURES.with_label_values(&[reason]).inc();
}

pub fn ratelimit_store_up(up: bool) {
    RATELIMIT_STORE_UP.set(i64::from(up));
}

pub fn ratelimit_store_error(decision: &str) {
    RATELIMIT_STORE_ERRORS.with_label_values(&[decision]).inc();
}

/// A client key's series, at zero from the start (a reload adds new keys').
pub fn register_key(key: &str) {
    KEY_REQUESTS.with_label_values(&[key]);
    for kind in ["prompt", "completion"] {
        KEY_TOKENS.with_label_values(&[key, kind]);
    }
    for reason in ["rpm", "tpm", "concurrency", "route", "model"] {
        KEY_REJECTIONS.with_label_values(&[key, reason]);
    }
}

/// Touch every metric so they all appear in the first scrape.
pub fn init() {
    LazyLock::force(&REQUESTS);
    LazyLock::force(&REQUEST_DURATION);
    LazyLock::force(&RESPONSE_FIRST_BYTE);
    LazyLock::force(&FIRST_BYTE);
    LazyLock::force(&ATTEMPTS);
    LazyLock::force(&OUTSTANDING);
    LazyLock::force(&UP);
    LazyLock::force(&EJECTIONS);
    LazyLock::force(&RETRIES);
    LazyLock::force(&COOLDOWN);
    LazyLock::force(&STREAMS_ACTIVE);
    LazyLock::force(&STREAM_DURATION);
    LazyLock::force(&STREAM_ABORTS);
    LazyLock::force(&STREAM_RESUMES);
    LazyLock::force(&CONTEXT_FALLBACKS);
    LazyLock::force(&QUEUE_DEPTH);
    LazyLock::force(&QUEUE_WAIT);
    LazyLock::force(&SHED);
    LazyLock::force(&BODY_BYTES);
    LazyLock::force(&CLIENT_CONNECTIONS);
    LazyLock::force(&BUFFERED_BYTES);
    CONNECTIONS_REFUSED.with_label_values(&["max_connections"]);
    for reason in ["missing", "invalid"] {
        AUTH_FAILURES.with_label_values(&[reason]);
    }
    for decision in ["allowed", "refused", "dropped"] {
        RATELIMIT_STORE_ERRORS.with_label_values(&[decision]);
    }
    for result in ["ok", "error"] {
        CONFIG_RELOADS.with_label_values(&[result]);
    }
    for kind in ["sse", "websocket"] {
        STREAMS_ACTIVE.with_label_values(&[kind]);
    }
    // Counters alerts watch exist at zero from the start, so that the
    // first increment is an increase Prometheus can see.
    for reason in STREAM_ABORT_REASONS {
        STREAM_ABORTS.with_label_values(&[reason]);
    }
}

/// What `ballast_stream_aborts_total{reason}` counts (`Forwarded` labels
/// other than "complete").
const STREAM_ABORT_REASONS: &[&str] = &[
    "client_gone",
    "upstream_broken",
    "upstream_stalled",
    "missing_done",
    "client_stalled",
    "shutdown",
];

/// What `ballast_shed_total{reason}` counts.
const SHED_REASONS: &[&str] = &["queue_full", "queue_timeout", "evicted"];

pub fn retry(route: &str, reason: &str) {
    RETRIES.with_label_values(&[route, reason]).inc();
}

/// One request answered: `first_byte` is when its response began to reach
/// the client (`None`: nothing was sent).
pub fn request_done(
    route: &str,
    status: u16,
    seconds: f64,
    streamed: bool,
    first_byte: Option<f64>,
) {
    REQUESTS
        .with_label_values(&[route, &status_label(status)])
        .inc();
    let streamed = if streamed { "true" } else { "false" };
    REQUEST_DURATION
        .with_label_values(&[route, streamed])
        .observe(seconds);
    if let Some(first_byte) = first_byte {
        RESPONSE_FIRST_BYTE
            .with_label_values(&[route, streamed])
            .observe(first_byte);
    }
}

/// Open event streams and upgraded connections, by kind.
pub fn streams_open() -> (i64, i64) {
    (
        STREAMS_ACTIVE.with_label_values(&["sse"]).get(),
        STREAMS_ACTIVE.with_label_values(&["websocket"]).get(),
    )
}

pub fn first_byte(pool: &str, seconds: f64) {
    FIRST_BYTE.with_label_values(&[pool]).observe(seconds);
}

pub fn attempt(pool: &str, server: &str, outcome: &str) {
    ATTEMPTS.with_label_values(&[pool, server, outcome]).inc();
}

pub fn upstream_ejected(pool: &str, server: &str) {
    EJECTIONS.with_label_values(&[pool, server]).inc();
}

/// Make sure a server's series exist from start-up, at zero.
pub fn register_pool(pool: &str) {
    queue_depth(pool, 0);
    QUEUE_WAIT.with_label_values(&[pool]);
    FIRST_BYTE.with_label_values(&[pool]);
    for reason in SHED_REASONS {
        SHED.with_label_values(&[pool, reason]);
    }
}

/// A route's series that alerts watch, at zero from the start.
pub fn register_route(route: &str) {
    RETRIES.with_label_values(&[route, "budget_exhausted"]);
}

pub fn register_server(pool: &str, server: &str) {
    EJECTIONS.with_label_values(&[pool, server]);
    set_server_state(pool, server, 0, true, 0.0);
}

pub fn set_server_state(pool: &str, server: &str, outstanding: u32, up: bool, cooldown_secs: f64) {
    OUTSTANDING
        .with_label_values(&[pool, server])
        .set(i64::from(outstanding));
    UP.with_label_values(&[pool, server]).set(i64::from(up));
    COOLDOWN
        .with_label_values(&[pool, server])
        .set(cooldown_secs);
}

/// Text exposition of every registered metric.
pub fn render() -> String {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(e) = encoder.encode(&prometheus::gather(), &mut buf) {
        tracing::error!(error = %e, "encoding metrics failed");
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// "100" ..= "599", made once: status labels are taken on every request.
static STATUS_LABELS: LazyLock<Vec<String>> =
    LazyLock::new(|| (100..600).map(|c: u16| c.to_string()).collect());

/// A status code as a label value, without allocating for real statuses.
pub fn status_label(code: u16) -> Cow<'static, str> {
    match STATUS_LABELS.get(usize::from(code).wrapping_sub(100)) {
        Some(label) => Cow::Borrowed(label.as_str()),
        None => code.to_string().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Shed;
    use crate::proxy::respond::Forwarded;

    #[test]
    fn alerted_series_exist_for_every_reason_there_is() {
        for shed in [Shed::QueueFull, Shed::Timeout, Shed::Evicted] {
            assert!(SHED_REASONS.contains(&shed.label()), "{shed:?}");
        }
        let ends = [
            Forwarded::ClientGone,
            Forwarded::UpstreamBroken,
            Forwarded::UpstreamStalled,
            Forwarded::MissingDone,
            Forwarded::ClientStalled,
            Forwarded::Shutdown,
        ];
        for end in ends {
            assert!(STREAM_ABORT_REASONS.contains(&end.label()), "{end:?}");
        }
        assert_eq!(ends.len(), STREAM_ABORT_REASONS.len());
    }
}
