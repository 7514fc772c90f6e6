use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::*;

mod problems;

const EXAMPLE: &str = include_str!("../../config/ballast.toml");

/// The smallest valid file: everything else defaults.
const MINIMAL: &str = r#"
[[pool]]
name = "p"
[[pool.servers]]
addr = "127.0.0.1:8101"

[[route]]
name = "r"
pool = "p"
"#;

fn problems(text: &str) -> Vec<ConfigProblem> {
    match parse("test.toml", text) {
        Ok(config) => panic!("expected problems, got {config:#?}"),
        Err(e) => {
            assert_eq!(e.file, "test.toml");
            e.problems
        }
    }
}

fn problem<'a>(problems: &'a [ConfigProblem], key: &str) -> &'a ConfigProblem {
    problems
        .iter()
        .find(|p| p.key == key)
        .unwrap_or_else(|| panic!("no problem for {key} in {problems:#?}"))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn default_retry() -> RetryConfig {
    RetryConfig {
        attempts: 3,
        on: vec![
            RetryOn::ConnectError,
            RetryOn::Status(429),
            RetryOn::Status(502),
            RetryOn::Status(503),
            RetryOn::Status(504),
        ],
        backoff_base: secs(1),
        backoff_max: secs(30),
        jitter: 0.1,
        budget: 0.2,
    }
}

fn default_timeouts() -> Timeouts {
    Timeouts {
        connect: secs(2),
        first_byte: secs(30),
        stream_idle: secs(60),
        total: secs(600),
        websocket_idle: secs(24 * 3600),
        client_write: secs(60),
    }
}

fn server(a: &str, weight: u32, max_conns: u32) -> ServerConfig {
    ServerConfig {
        addr: a.to_owned(),
        host: addr(a).ip().to_string(),
        port: addr(a).port(),
        is_name: false,
        resolved: vec![addr(a)],
        weight,
        max_conns,
    }
}

#[test]
fn example_file_parses_into_expected_model() {
    let config = parse("config/ballast.toml", EXAMPLE).unwrap_or_else(|e| panic!("{e}"));
    let expected = Config {
        server: ServerSection {
            listen: vec!["127.0.0.1:8080".into()],
            threads: config.server.threads, // default: cores
            grace_period: secs(5),
            drain_delay: secs(2),
            upgrade_sock: "/tmp/ballast-upgrade.sock".into(),
            trusted_proxies: vec![],
            tls: None,
            resolver: vec![],
        },
        admin: AdminSection {
            listen: "127.0.0.1:9090".into(),
        },
        limits: Limits {
            max_request_body: 16 * 1024 * 1024,
            max_header_bytes: 32 * 1024,
            header_timeout: secs(10),
            max_decompression_ratio: 200,
            body_timeout: secs(30),
            keepalive_idle: secs(60),
            max_connections: 10_000,
            max_buffered_bytes: 512 * 1024 * 1024,
        },
        log: LogSection {
            format: LogFormat::Text,
            level: "info".into(),
        },
        pools: vec![PoolConfig {
            name: "local".into(),
            max_fails: 3,
            fail_timeout: secs(30),
            max_conns: 0,
            host: None,
            tls: false,
            sni: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            http2: Http2Mode::Auto,
            api_key_env: None,
            api_key_header: http::header::AUTHORIZATION,
            resolve_interval: Duration::from_secs(30),
            balance: Balance::LeastOutstanding,
            continuation: Default::default(),
            probe_interval: None,
            load_metrics: None,
            affinity_header: None,
            affinity: crate::config::AffinityConfig::default(),
            health: Some(HealthConfig {
                path: "/health".into(),
                interval: secs(2),
                timeout: secs(1),
                rise: 2,
                fall: 3,
            }),
            queue: QueueConfig {
                max_depth: 100,
                max_wait: secs(10),
            },
            servers: vec![
                server("127.0.0.1:8101", 1, 0),
                server("127.0.0.1:8102", 1, 0),
                server("127.0.0.1:8103", 1, 0),
            ],
        }],
        routes: vec![RouteConfig {
            name: "chat".into(),
            path_prefix: "/v1/".into(),
            models: vec![],
            pool: 0,
            fallback: vec![],
            openai: false,
            priority: Priority::Normal,
            priority_header: None,
            upgrades: vec!["websocket".to_owned()],
            max_tokens_limit: None,
            stream_include_usage: false,
            require_key: false,
            resume: None,
            jobs: None,
            retry: default_retry(),
            timeouts: default_timeouts(),
        }],
        auth: None,
        ratelimit: RateLimitSection {
            redis: None,
            fail_open: true,
            timeout: Duration::from_millis(100),
        },
        jobs: None,
        amqp: vec![],
    };
    assert_eq!(config, expected);
    assert!(config.server.threads >= 1);
}

/// Every key of the design's example (plus a second pool to fall back to).
const FULL: &str = r#"
[server]
listen = ["0.0.0.0:8080", "[::1]:8081"]
threads = 2
grace_period = "250ms"
trusted_proxies = ["10.1.2.3/8", "::1"]

[admin]
listen = "127.0.0.1:9090"

[limits]
max_request_body = "1MiB"
max_header_bytes = 8192
header_timeout = "5s"
max_decompression_ratio = 50
body_timeout = "3s"
keepalive_idle = "20s"
max_connections = 500
max_buffered_bytes = "64MiB"

[log]
format = "json"
level = "ballast=debug,info"

[[pool]]
name = "deepseek"
max_fails = 0
fail_timeout = "1m"
max_conns = 16
host = "api.example.com"
tls = true
sni = "api.example.com"
http2 = "never"
api_key_env = "PATH"
api_key_header = "X-Api-Key"

[pool.queue]
max_depth = 0
max_wait = "1s"

[[pool.servers]]
addr = "10.0.1.10:8080"
weight = 2
max_conns = 64

[[pool.servers]]
addr = "localhost:8081"

[[pool]]
name = "local"
health.path = "/ready"
health.rise = 1
servers = [{ addr = "127.0.0.1:9001" }]

[[route]]
name = "chat"
path_prefix = "/v1/"
pool = "deepseek"

[route.retry]
attempts = 5
on = ["timeout", "reset", 500, "429"]
backoff_base = "100ms"
backoff_max = "2s"
jitter = 0
budget = 1.5

[route.timeouts]
connect = "1s"
first_byte = "10s"
stream_idle = "20s"
total = "1h"
websocket_idle = "30m"
client_write = "15s"

[[route]]
name = "rest"
pool = "local"
"#;

#[test]
fn full_example_parses_into_expected_model() {
    let c = parse("full.toml", FULL).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.server,
        ServerSection {
            listen: vec!["0.0.0.0:8080".into(), "[::1]:8081".into()],
            threads: 2,
            grace_period: Duration::from_millis(250),
            drain_delay: secs(2),
            upgrade_sock: "/tmp/ballast-upgrade.sock".into(),
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            tls: None,
            resolver: vec![],
        }
    );
    assert_eq!(
        c.limits,
        Limits {
            max_request_body: 1024 * 1024,
            max_header_bytes: 8192,
            header_timeout: secs(5),
            max_decompression_ratio: 50,
            body_timeout: secs(3),
            keepalive_idle: secs(20),
            max_connections: 500,
            max_buffered_bytes: 64 * 1024 * 1024,
        }
    );
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.log.level, "ballast=debug,info");

    let deepseek = &c.pools[0];
    assert_eq!(deepseek.max_fails, 0);
    assert_eq!(deepseek.fail_timeout, secs(60));
    assert_eq!(deepseek.host.as_deref(), Some("api.example.com"));
    assert!(deepseek.tls);
    assert_eq!(deepseek.sni.as_deref(), Some("api.example.com"));
    assert_eq!(deepseek.http2, Http2Mode::Never);
    assert_eq!(deepseek.api_key_env.as_deref(), Some("PATH"));
    assert_eq!(deepseek.api_key_header, "x-api-key");
    assert_eq!(deepseek.health, None);
    assert_eq!(
        deepseek.queue,
        QueueConfig {
            max_depth: 0,
            max_wait: secs(1)
        }
    );
    assert_eq!(deepseek.servers[0], server("10.0.1.10:8080", 2, 64));
    // hostnames resolve, IPv4 preferred; max_conns inherits the pool's
    let localhost = &deepseek.servers[1];
    assert_eq!(localhost.addr, "localhost:8081");
    assert_eq!(localhost.resolved, vec![addr("127.0.0.1:8081")]);
    assert!(localhost.is_name);
    assert_eq!(localhost.host, "localhost");
    assert_eq!((localhost.weight, localhost.max_conns), (1, 16));

    let local = &c.pools[1];
    assert_eq!(
        local.health,
        Some(HealthConfig {
            path: "/ready".into(),
            interval: secs(5),
            timeout: secs(1),
            rise: 1,
            fall: 3,
        })
    );
    assert_eq!(local.servers, vec![server("127.0.0.1:9001", 1, 0)]);

    let chat = &c.routes[0];
    assert!(chat.models.is_empty());
    assert_eq!(chat.pool, 0);
    assert_eq!(
        chat.retry,
        RetryConfig {
            attempts: 5,
            on: vec![
                RetryOn::Timeout,
                RetryOn::Reset,
                RetryOn::Status(500),
                RetryOn::Status(429)
            ],
            backoff_base: Duration::from_millis(100),
            backoff_max: secs(2),
            jitter: 0.0,
            budget: 1.5,
        }
    );
    assert_eq!(
        chat.timeouts,
        Timeouts {
            connect: secs(1),
            first_byte: secs(10),
            stream_idle: secs(20),
            total: secs(3600),
            websocket_idle: secs(1800),
            client_write: secs(15),
        }
    );
    assert_eq!(
        (c.routes[1].pool, c.routes[1].path_prefix.as_str()),
        (1, "/")
    );
}

#[test]
fn defaults() {
    let c = parse("min.toml", MINIMAL).unwrap_or_else(|e| panic!("{e}"));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(
        c.server,
        ServerSection {
            listen: vec!["0.0.0.0:8080".into()],
            threads: cores,
            grace_period: secs(5),
            drain_delay: secs(2),
            upgrade_sock: "/tmp/ballast-upgrade.sock".into(),
            trusted_proxies: vec![],
            tls: None,
            resolver: vec![],
        }
    );
    assert_eq!(c.admin.listen, "127.0.0.1:9090");
    assert_eq!(
        c.limits,
        Limits {
            max_request_body: 16 * 1024 * 1024,
            max_header_bytes: 32 * 1024,
            header_timeout: secs(10),
            max_decompression_ratio: 200,
            body_timeout: secs(30),
            keepalive_idle: secs(60),
            max_connections: 10_000,
            max_buffered_bytes: 512 * 1024 * 1024,
        }
    );
    assert_eq!(
        c.log,
        LogSection {
            format: LogFormat::Text,
            level: "info".into()
        }
    );
    assert_eq!(
        c.pools,
        vec![PoolConfig {
            name: "p".into(),
            max_fails: 3,
            fail_timeout: secs(30),
            max_conns: 0,
            host: None,
            tls: false,
            sni: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            http2: Http2Mode::Auto,
            api_key_env: None,
            api_key_header: http::header::AUTHORIZATION,
            resolve_interval: Duration::from_secs(30),
            balance: Balance::LeastOutstanding,
            continuation: Default::default(),
            probe_interval: None,
            load_metrics: None,
            affinity_header: None,
            affinity: crate::config::AffinityConfig::default(),
            health: None,
            queue: QueueConfig {
                max_depth: 100,
                max_wait: secs(10)
            },
            servers: vec![server("127.0.0.1:8101", 1, 0)],
        }]
    );
    assert_eq!(
        c.routes,
        vec![RouteConfig {
            name: "r".into(),
            path_prefix: "/".into(),
            models: vec![],
            pool: 0,
            fallback: vec![],
            openai: false,
            priority: Priority::Normal,
            priority_header: None,
            upgrades: vec!["websocket".to_owned()],
            max_tokens_limit: None,
            stream_include_usage: false,
            require_key: false,
            resume: None,
            jobs: None,
            retry: default_retry(),
            timeouts: default_timeouts(),
        }]
    );
    // an empty [pool.health] table turns probing on with its defaults
    let text = MINIMAL.replace("name = \"p\"\n", "name = \"p\"\n[pool.health]\n");
    let c = parse("min.toml", &text).unwrap_or_else(|e| panic!("{e}"));
    let health = c.pools[0].health.clone().unwrap();
    assert_eq!(
        (health.path.as_str(), health.interval, health.timeout),
        ("/health", secs(5), secs(1))
    );
    assert_eq!((health.rise, health.fall), (2, 3));
}

#[test]
fn missing_file() {
    let err = load(Path::new("/definitely/not/here/ballast.toml")).unwrap_err();
    assert_eq!(err.file, "/definitely/not/here/ballast.toml");
    assert_eq!(err.problems.len(), 1);
    assert!(err
        .to_string()
        .starts_with("/definitely/not/here/ballast.toml: cannot read config file '/definitely/not/here/ballast.toml': "));
}

#[test]
fn load_reads_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ballast.toml");
    std::fs::write(&path, EXAMPLE).unwrap();
    let config = load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.pools[0].servers.len(), 3);

    std::fs::write(&path, "[[pool]]\n").unwrap();
    let err = load(&path).unwrap_err();
    assert_eq!(err.file, path.display().to_string());
}

#[test]
fn models_and_openai_rules() {
    let text = MINIMAL.replace(
        "pool = \"p\"",
        "pool = \"p\"\nmodels = [\"m\"]\nopenai = true\nmax_tokens_limit = 4096\nstream_include_usage = true",
    );
    let c = parse("t", &text).unwrap_or_else(|e| panic!("{e}"));
    let r = &c.routes[0];
    assert_eq!(r.models, vec!["m".to_owned()]);
    assert!(r.openai && r.stream_include_usage);
    assert_eq!(r.max_tokens_limit, Some(4096));
    let bad = MINIMAL.replace("pool = \"p\"", "pool = \"p\"\nmax_tokens_limit = 0");
    problem(&problems(&bad), "route[0].max_tokens_limit");
}

#[test]
fn priorities_and_fallbacks() {
    let text = MINIMAL.replace(
        "pool = \"p\"",
        "pool = \"p\"\npriority = \"low\"\npriority_header = \"x-ballast-priority\"\n\
         fallback = [{ pool = \"p\", model = \"small\" }]",
    );
    let c = parse("t", &text).unwrap_or_else(|e| panic!("{e}"));
    let r = &c.routes[0];
    assert_eq!(r.priority, Priority::Low);
    assert_eq!(
        r.priority_header.as_ref().map(|h| h.as_str()),
        Some("x-ballast-priority")
    );
    assert_eq!(
        r.fallback,
        vec![Fallback {
            on: Default::default(),
            pool: 0,
            model: Some("small".into())
        }]
    );

    let bad = MINIMAL.replace(
        "pool = \"p\"",
        "pool = \"p\"\npriority = \"urgent\"\npriority_header = \"bad header\"",
    );
    let p = problems(&bad);
    assert!(problem(&p, "route[0].priority").message.contains("urgent"));
    assert!(problem(&p, "route[0].priority_header")
        .message
        .contains("not a valid header name"));
}
