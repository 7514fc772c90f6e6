//! Problems: every kind of mistake is reported with its line, column and key.

use super::*;

#[test]
fn unknown_key_names_key_and_line() {
    let text = format!("{MINIMAL}[route.retry]\nattempts = 2\nbogus = 1\n");
    let p = problems(&text);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!(p[0].key, "route[0].retry.bogus");
    assert_eq!((p[0].line, p[0].column), (12, 1));
    assert!(
        p[0].message.contains("unknown key `bogus`"),
        "{}",
        p[0].message
    );

    // top level, inline table, table header
    let p = problems("[pool]\nname = \"p\"\n");
    assert_eq!((p[0].key.as_str(), p[0].line), ("pool", 1));
    assert!(p[0]
        .message
        .ends_with("write [[pool]] (double brackets) for each pool"));
    let p = problems("colour = 1\n");
    assert_eq!((p[0].key.as_str(), p[0].line), ("colour", 1));
    let text = MINIMAL.replace(
        "pool = \"p\"",
        "pool = \"p\"\nfallback = [{ pool = \"p\" }, { pool = \"p\", modle = \"x\" }]",
    );
    assert_eq!(problems(&text)[0].key, "route[0].fallback[1].modle");
    let text = MINIMAL.replace(
        "[[pool.servers]]",
        "[pool.helth]\nrise = 1\n[[pool.servers]]",
    );
    let p = problems(&text);
    assert_eq!((p[0].key.as_str(), p[0].line), ("pool[0].helth", 4));
}

#[test]
fn wrong_type_names_key() {
    let text = MINIMAL.replace(
        "addr = \"127.0.0.1:8101\"",
        "addr = \"127.0.0.1:8101\"\nweight = \"heavy\"",
    );
    let p = problems(&text);
    assert_eq!(p.len(), 1);
    assert_eq!(
        (p[0].key.as_str(), p[0].line, p[0].column),
        ("pool[0].servers[0].weight", 6, 10)
    );
    assert!(p[0].message.contains("invalid type"), "{}", p[0].message);
}

#[test]
fn syntax_error_has_position() {
    let p = problems("[server]\nthreads = = 2\n");
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].line, p[0].column), (2, 11));
    assert_eq!(p[0].key, "");
    assert!(!p[0].message.contains('\n'));
}

#[test]
fn bad_duration() {
    let text = format!(
        "{MINIMAL}[route.timeouts]\nconnect = \"2 parsecs\"\ntotal = \"0s\"\nfirst_byte = \"30\"\n"
    );
    let p = problems(&text);
    assert_eq!(p.len(), 3, "{p:#?}");
    let connect = problem(&p, "route[0].timeouts.connect");
    assert_eq!((connect.line, connect.column), (11, 11));
    assert!(
        connect.message.contains("invalid duration '2 parsecs'"),
        "{}",
        connect.message
    );
    assert!(problem(&p, "route[0].timeouts.total")
        .message
        .contains("greater than 0"));
    problem(&p, "route[0].timeouts.first_byte");
}

#[test]
fn sizes() {
    let text =
        format!("[limits]\nmax_request_body = \"16 lightyears\"\nmax_header_bytes = -1\n{MINIMAL}");
    let p = problems(&text);
    assert_eq!(p.len(), 2, "{p:#?}");
    let body = problem(&p, "limits.max_request_body");
    assert_eq!(body.line, 2);
    assert!(
        body.message.contains("invalid size '16 lightyears'"),
        "{}",
        body.message
    );
    problem(&p, "limits.max_header_bytes");

    let text = format!("[limits]\nmax_request_body = 1000\nmax_header_bytes = \"1KB\"\n{MINIMAL}");
    let c = parse("t", &text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (c.limits.max_request_body, c.limits.max_header_bytes),
        (1000, 1000)
    );
}

#[test]
fn route_to_missing_pool() {
    let text = MINIMAL.replace(
        "pool = \"p\"",
        "pool = \"q\"\nfallback = [{ pool = \"nope\" }]",
    );
    let p = problems(&text);
    assert_eq!(p.len(), 2, "{p:#?}");
    let route = problem(&p, "route[0].pool");
    assert_eq!(route.line, 9);
    assert_eq!(route.message, "unknown pool 'q'; known pools: 'p'");
    problem(&p, "route[0].fallback[0].pool");

    let p = problems("[[route]]\nname = \"r\"\n");
    assert!(problem(&p, "route[0].pool")
        .message
        .contains("no pools are defined"));
    problem(&p, "pool");
}

#[test]
fn pool_with_empty_servers() {
    let p =
        problems("[[pool]]\nname = \"p\"\nservers = []\n[[route]]\nname = \"r\"\npool = \"p\"\n");
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!((p[0].key.as_str(), p[0].line), ("pool[0].servers", 3));
    assert_eq!(p[0].message, "pool 'p' has no servers");

    let p = problems("[[pool]]\nname = \"p\"\n[[route]]\nname = \"r\"\npool = \"p\"\n");
    assert!(problem(&p, "pool[0].servers")
        .message
        .starts_with("pool 'p' has no servers"));
}

#[test]
fn duplicate_pool_names() {
    let text =
        format!("{MINIMAL}\n[[pool]]\nname = \"p\"\n[[pool.servers]]\naddr = \"127.0.0.1:8102\"\n");
    let p = problems(&text);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!((p[0].key.as_str(), p[0].line), ("pool[1].name", 12));
    assert_eq!(
        p[0].message,
        "duplicate pool name 'p' (first defined on line 3)"
    );
}

#[test]
fn duplicate_route_names() {
    let text =
        format!("{MINIMAL}\n[[route]]\nname = \"r\"\npath_prefix = \"/v2/\"\npool = \"p\"\n");
    let p = problems(&text);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!((p[0].key.as_str(), p[0].line), ("route[1].name", 12));
    assert!(p[0].message.starts_with("duplicate route name 'r'"));
}

#[test]
fn same_prefix_without_models() {
    let text = format!("{MINIMAL}\n[[route]]\nname = \"r2\"\npool = \"p\"\n[[route]]\nname = \"r3\"\nmodels = [\"m\"]\npool = \"p\"\n");
    let p = problems(&text);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!((p[0].key.as_str(), p[0].line), ("route[1].path_prefix", 11));
}

#[test]
fn bad_retry_on() {
    let text =
        format!("{MINIMAL}[route.retry]\non = [\"connect_error\", \"418\", \"teapot\", 503]\n");
    let p = problems(&text);
    assert_eq!(p.len(), 2, "{p:#?}");
    let bad = problem(&p, "route[0].retry.on[1]");
    assert_eq!((bad.line, bad.column), (11, 24));
    assert!(bad
        .message
        .starts_with("unknown retry condition '418'; expected one of connect_error"));
    problem(&p, "route[0].retry.on[2]");
}

#[test]
fn retry_ranges() {
    let text = format!(
        "{MINIMAL}[route.retry]\nattempts = 0\nbackoff_base = \"1m\"\njitter = 1.5\nbudget = -0.1\n"
    );
    let p = problems(&text);
    assert_eq!(p.len(), 4, "{p:#?}");
    for key in ["attempts", "backoff_base", "jitter", "budget"] {
        problem(&p, &format!("route[0].retry.{key}"));
    }
}

#[test]
fn many_problems_are_all_reported() {
    let text = r#"
[server]
listen = ["localhost"]
threads = 0

[admin]
listen = "nowhere"

[log]
format = "xml"

[[pool]]
name = "a"
sni = "api.example.com"
api_key_env = "BALLAST_TEST_SURELY_UNSET_VARIABLE"
[pool.health]
path = "health"
rise = 0
[[pool.servers]]
addr = "127.0.0.1"
weight = 0
[[pool.servers]]
addr = "http://127.0.0.1:80"

[[route]]
name = "r"
path_prefix = "v1"
pool = "b"
"#;
    let p = problems(text);
    let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "server.listen[0]",
            "server.threads",
            "admin.listen",
            "log.format",
            "pool[0].sni",
            "pool[0].api_key_env",
            "pool[0].health.path",
            "pool[0].health.rise",
            "pool[0].servers[0].addr",
            "pool[0].servers[0].weight",
            "pool[0].servers[1].addr",
            "route[0].path_prefix",
            "route[0].pool",
        ]
    );
    assert_eq!(
        p[4].message,
        "`sni` applies only to a TLS pool; add `tls = true`"
    );
    assert!(p[5].message.contains("BALLAST_TEST_SURELY_UNSET_VARIABLE"));
    assert_eq!((p[0].line, p[0].column), (3, 11));
}

#[test]
fn display_is_one_line_per_problem() {
    let err = parse("b.toml", "[[pool]]\nname = \"p\"\n").unwrap_err();
    let shown = err.to_string();
    assert_eq!(
        shown,
        "b.toml:1:1: pool[0].servers: pool 'p' has no servers; add at least one [[pool.servers]]\n\
         b.toml:1:1: route: no [[route]] is defined; at least one is required"
    );
}

#[test]
fn listener_tls_needs_both_files_that_exist() {
    let text = format!("[server]\ntls = {{ cert = \"/nonexistent/c.pem\" }}\n{MINIMAL}");
    let p = problems(&text);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!((p[0].key.as_str(), p[0].line), ("server.tls.key", 2));
    let text = format!(
        "[server]\ntls = {{ cert = \"/nonexistent/c.pem\", key = \"/nonexistent/k.pem\" }}\n{MINIMAL}"
    );
    let p = problems(&text);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!(p[0].key, "server.tls.cert");
    assert!(
        p[0].message.contains("cannot read '/nonexistent/c.pem'"),
        "{}",
        p[0].message
    );
}

#[test]
fn pool_tls_keys_are_checked() {
    let pool = |extra: &str| MINIMAL.replace("name = \"p\"", &format!("name = \"p\"\n{extra}"));
    let cases = [
        (
            "ca_file = \"ca.pem\"",
            "pool[0].ca_file",
            "applies only to a TLS pool",
        ),
        (
            "tls = true\nsni = \"bad name!\"",
            "pool[0].sni",
            "not a DNS name",
        ),
        (
            "tls = true\nca_file = \"/nonexistent/ca.pem\"",
            "pool[0].ca_file",
            "cannot read",
        ),
        (
            "tls = true\nclient_cert = \"c.pem\"",
            "pool[0].client_cert",
            "needs `client_key`",
        ),
        (
            "tls = true\nclient_key = \"k.pem\"",
            "pool[0].client_key",
            "needs `client_cert`",
        ),
        (
            "http2 = \"sometimes\"",
            "pool[0].http2",
            "unknown http2 mode",
        ),
        (
            "api_key_header = \"x-api-key\"",
            "pool[0].api_key_header",
            "needs `api_key_env`",
        ),
        (
            "api_key_env = \"PATH\"\napi_key_header = \"Host\"",
            "pool[0].api_key_header",
            "set by the gateway",
        ),
        (
            "api_key_env = \"PATH\"\napi_key_header = \"a b\"",
            "pool[0].api_key_header",
            "not a header name",
        ),
    ];
    for (extra, key, message) in cases {
        let p = problems(&pool(extra));
        assert_eq!(p.len(), 1, "{extra}: {p:#?}");
        assert_eq!(p[0].key, key, "{extra}");
        assert!(p[0].message.contains(message), "{extra}: {}", p[0].message);
    }
}

#[test]
fn pool_host_must_be_a_host_name() {
    for bad in [
        "api.example.com\\r\\nx-injected: 1",
        "http://api.example.com/",
        "a b",
    ] {
        let text = MINIMAL.replace("name = \"p\"", &format!("name = \"p\"\nhost = \"{bad}\""));
        let p = problems(&text);
        assert_eq!(p.len(), 1, "{bad}: {p:#?}");
        assert_eq!(p[0].key, "pool[0].host");
        assert!(p[0].message.contains("not a host name"), "{}", p[0].message);
    }
    let text = MINIMAL.replace(
        "name = \"p\"",
        "name = \"p\"\nhost = \"api.example.com:443\"",
    );
    assert!(parse("test.toml", &text).is_ok());
}

#[test]
fn upgrades_are_protocol_names_and_never_http() {
    let with = |list: &str| {
        MINIMAL.replace(
            "pool = \"p\"\n",
            &format!("pool = \"p\"\nupgrades = {list}\n"),
        )
    };
    let c = parse(
        "test.toml",
        &with(r#"["WebSocket", "websocket", "my-proto"]"#),
    )
    .unwrap();
    assert_eq!(c.routes[0].upgrades, ["websocket", "my-proto"]);
    assert!(parse("test.toml", &with("[]")).unwrap().routes[0]
        .upgrades
        .is_empty());
    for bad in ["h2c", "HTTP/2.0", "web socket", ""] {
        let p = problems(&with(&format!("[\"{bad}\"]")));
        assert_eq!(p.len(), 1, "{bad}: {p:#?}");
        assert_eq!(p[0].key, "route[0].upgrades[0]");
    }
}

#[test]
fn trusted_proxies_are_addresses_or_cidrs() {
    let text = format!(
        "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"proxy.local\", \"10.0.0.0/33\"]\n{MINIMAL}"
    );
    let p = problems(&text);
    assert_eq!(p.len(), 2, "{p:#?}");
    assert_eq!(p[0].key, "server.trusted_proxies[1]");
    assert_eq!(p[1].key, "server.trusted_proxies[2]");
    assert!(
        p[0].message.contains("not an address or CIDR"),
        "{}",
        p[0].message
    );
}

#[test]
fn client_keys_and_rate_limits() {
    // require_key needs [auth].
    let text = MINIMAL.replace("pool = \"p\"", "pool = \"p\"\nrequire_key = true");
    let p = problems(&text);
    assert_eq!(p[0].key, "route[0].require_key", "{p:#?}");
    assert!(p[0].message.contains("add [auth]"), "{}", p[0].message);

    // The key file must be there, and right.
    let text = format!("[auth]\nkeys_file = \"/no/such/keys.toml\"\n{MINIMAL}");
    let p = problems(&text);
    assert_eq!((p[0].key.as_str(), p[0].line), ("auth.keys_file", 2));
    assert!(p[0]
        .message
        .contains("cannot read key file '/no/such/keys.toml'"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.toml");
    std::fs::write(
        &file,
        "[[key]]\nname = \"a\"\nsha256 = \"short\"\nrpm = -1\n",
    )
    .unwrap();
    let text = format!("[auth]\nkeys_file = \"{}\"\n{MINIMAL}", file.display());
    let p = problems(&text);
    assert_eq!(p[0].key, "auth.keys_file");
    assert!(p[0].message.contains("keys.toml"), "{}", p[0].message);

    // One source, not both, nor none.
    let text = format!("[auth]\nkeys_file = \"k\"\nkeys_env = \"K\"\n{MINIMAL}");
    assert!(problems(&text)[0].message.contains("not both"));
    let text = format!("[auth]\n{MINIMAL}");
    assert!(problems(&text)[0].message.contains("set keys_file"));
    let text = format!("[auth]\nkeys_env = \"BALLAST_TEST_UNSET_KEYS\"\n{MINIMAL}");
    assert!(problems(&text)[0]
        .message
        .contains("`BALLAST_TEST_UNSET_KEYS` is not set"));

    // A Redis URL that is not one is refused without repeating it (it may
    // hold a password).
    let text = format!("[ratelimit]\nredis = \"10.0.0.5:hunter2\"\n{MINIMAL}");
    let p = problems(&text);
    assert_eq!(p[0].key, "ratelimit.redis");
    assert!(!p[0].message.contains("hunter2"), "{}", p[0].message);
    let text = format!("[ratelimit]\ntimeout = \"soon\"\n{MINIMAL}");
    assert_eq!(problems(&text)[0].key, "ratelimit.timeout");
}

#[test]
fn balance_and_affinity() {
    let text = MINIMAL.replace(
        "name = \"p\"\n",
        "name = \"p\"\nbalance = \"round_robin\"\n",
    );
    let p = problems(&text);
    assert_eq!(p[0].key, "pool[0].balance");
    assert!(
        p[0].message.contains("'round_robin' is not"),
        "{}",
        p[0].message
    );
    // Affinity settings without affinity are a mistake worth saying.
    let text = MINIMAL.replace(
        "name = \"p\"\n",
        "name = \"p\"\n[pool.affinity]\nmin_match = 0.3\n",
    );
    let p = problems(&text);
    assert_eq!(p[0].key, "pool[0].affinity", "{p:#?}");
    let text = MINIMAL.replace(
        "name = \"p\"\n",
        "name = \"p\"\nbalance = \"prefix_affinity\"\n[pool.affinity]\nmin_match = 1.5\nentries = 0\n",
    );
    let keys: Vec<String> = problems(&text).into_iter().map(|p| p.key).collect();
    assert_eq!(
        keys,
        ["pool[0].affinity.min_match", "pool[0].affinity.entries"]
    );
    let text = MINIMAL.replace(
        "name = \"p\"\n",
        "name = \"p\"\nbalance = \"prefix_affinity\"\n",
    );
    let c = parse("t.toml", &text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.pools[0].balance,
        Balance::PrefixAffinity(AffinityConfig {
            min_match: 0.5,
            balance_abs: 4,
            balance_rel: 1.5,
            entries: 65_536,
        })
    );
}

#[test]
fn continuation_and_probe_interval() {
    let with = |extra: &str| MINIMAL.replace("name = \"p\"\n", &format!("name = \"p\"\n{extra}\n"));
    let p = problems(&with("continuation = \"openai\""));
    assert!(
        problem(&p, "pool[0].continuation")
            .message
            .contains("'openai' is not \"none\", \"vllm\""),
        "{p:#?}"
    );
    let p = problems(&with("fail_timeout = \"10s\"\nprobe_interval = \"20s\""));
    assert!(problem(&p, "pool[0].probe_interval")
        .message
        .contains("must not be longer than fail_timeout"));
    let p = problems(&with("probe_interval = \"0s\""));
    assert!(problem(&p, "pool[0].probe_interval")
        .message
        .contains("greater than 0"));

    let c = parse(
        "t.toml",
        &with("continuation = \"SGLang\"\nprobe_interval = \"2s\""),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.pools[0].continuation,
        crate::openai::continuation::Dialect::Vllm
    );
    assert_eq!(c.pools[0].probe_interval, Some(secs(2)));
    let c = parse("t.toml", MINIMAL).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.pools[0].probe_interval, None,
        "nginx semantics by default"
    );
}

#[test]
fn resume_needs_an_openai_route_and_a_pool_that_can_continue() {
    let resume = "[route.resume]\nenabled = true\n";
    let p = problems(&format!("{MINIMAL}openai = true\n{resume}"));
    assert!(problem(&p, "route[0].resume.enabled")
        .message
        .contains("no pool of this route"));
    let vllm = MINIMAL.replace("name = \"p\"\n", "name = \"p\"\ncontinuation = \"vllm\"\n");
    let p = problems(&format!("{vllm}{resume}"));
    assert!(problem(&p, "route[0].resume.enabled")
        .message
        .contains("needs openai = true"));
    let p = problems(&format!("{vllm}openai = true\n{resume}max_resumes = 0\n"));
    assert!(problem(&p, "route[0].resume.max_resumes")
        .message
        .contains("between 1 and 100"));

    let c = parse("t.toml", &format!("{vllm}openai = true\n{resume}"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.routes[0].resume, Some(ResumeConfig { max_resumes: 1 }));
    let off = format!("{vllm}openai = true\n[route.resume]\nenabled = false\n");
    let c = parse("t.toml", &off).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.routes[0].resume, None);
}

#[test]
fn fallback_reasons() {
    let text = MINIMAL.replace(
        "pool = \"p\"",
        "pool = \"p\"\nfallback = [{ pool = \"p\", on = [\"context_length\", \"too_long\"] }, { pool = \"p\", on = [] }]",
    );
    let p = problems(&text);
    assert!(problem(&p, "route[0].fallback[0].on")
        .message
        .contains("'too_long' is not"));
    assert!(problem(&p, "route[0].fallback[1].on")
        .message
        .contains("at least one reason"));
    let text = MINIMAL.replace(
        "pool = \"p\"",
        "pool = \"p\"\nfallback = [{ pool = \"p\" }, { pool = \"p\", on = [\"context_length\", \"unavailable\"] }]",
    );
    let c = parse("t.toml", &text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.routes[0].fallback[0].on, FallbackOn::default());
    assert_eq!(
        c.routes[0].fallback[1].on,
        FallbackOn {
            unavailable: true,
            context_length: true
        }
    );
}

#[test]
fn jobs_need_a_store_and_sane_limits() {
    let jobs_route = format!("{MINIMAL}[route.jobs]\nenabled = true\n");
    let p = problems(&jobs_route);
    assert!(problem(&p, "route[0].jobs.enabled")
        .message
        .contains("needs a job store: add [jobs] with dir"));
    let p = problems(&format!("[jobs]\nmax_queued = 0\n{jobs_route}"));
    problem(&p, "jobs.dir");
    let p = problems(&format!(
        "[jobs]\ndir = \"/tmp/j\"\nmax_queued = 0\nworkers = 0\n{jobs_route}max_attempts = 0\nttl = \"0s\"\n"
    ));
    for key in [
        "jobs.max_queued",
        "jobs.workers",
        "route[0].jobs.max_attempts",
        "route[0].jobs.ttl",
    ] {
        problem(&p, key);
    }
    let c = parse("t.toml", &format!("[jobs]\ndir = \"/tmp/j\"\n{jobs_route}"))
        .unwrap_or_else(|e| panic!("{e}"));
    let jobs = c.jobs.unwrap();
    assert_eq!(
        (jobs.max_queued, jobs.workers, jobs.max_result_bytes),
        (10_000, 4, 1 << 20)
    );
    let policy = c.routes[0].jobs.unwrap();
    assert_eq!(policy.max_attempts, 5);
    assert_eq!(policy.ttl, secs(3600));
    assert_eq!(policy.retention, secs(86_400));
}

#[test]
fn callbacks_need_a_secret_and_plain_hosts() {
    let base = "[jobs]\ndir = \"/tmp/j\"\n";
    let p = problems(&format!(
        "{base}callback_hosts = [\"hooks.example.com\"]\n{MINIMAL}"
    ));
    assert!(problem(&p, "jobs.callback_secret_env")
        .message
        .contains("name the environment variable"));
    let p = problems(&format!(
        "{base}callback_hosts = [\"https://x/y\", \"u@h\"]\ncallback_secret_env = \"BALLAST_NO_SUCH_VAR_X\"\n{MINIMAL}"
    ));
    assert_eq!(
        p.iter().filter(|p| p.key == "jobs.callback_hosts").count(),
        2,
        "{p:#?}"
    );
    assert!(problem(&p, "jobs.callback_secret_env")
        .message
        .contains("`BALLAST_NO_SUCH_VAR_X` is not set"));
    // The secret is never shown.
    std::env::set_var("BALLAST_TEST_CB_SECRET", "s3cr3t-value");
    let c = parse(
        "t.toml",
        &format!("{base}callback_hosts = [\"Hooks.Example.com:8443\"]\ncallback_secret_env = \"BALLAST_TEST_CB_SECRET\"\n{MINIMAL}"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let jobs = c.jobs.unwrap();
    assert_eq!(
        jobs.callback_hosts,
        vec!["hooks.example.com:8443".to_owned()]
    );
    assert!(!format!("{jobs:?}").contains("s3cr3t"));
}

#[test]
fn amqp_consumers_need_a_broker_and_a_queue() {
    let base = format!("{MINIMAL}[[amqp]]\n");
    let p = problems(&base);
    assert!(problem(&p, "amqp[0].queue")
        .message
        .contains("missing key `queue`"));
    let p = problems(&format!("{base}queue = \"q\"\n"));
    assert!(problem(&p, "amqp[0].url")
        .message
        .contains("missing key `url`"));
    let p = problems(&format!(
        "{base}queue = \"q\"\nurl = \"amqp://u:p@h/\"\nurl_env = \"X\"\n"
    ));
    problem(&p, "amqp[0].url_env");
    let p = problems(&format!(
        "{base}queue = \"q\"\nurl_env = \"BALLAST_NO_SUCH_AMQP_URL\"\n"
    ));
    assert!(problem(&p, "amqp[0].url_env")
        .message
        .contains("`BALLAST_NO_SUCH_AMQP_URL` is not set"));
    // A bad URL is explained without repeating it (it may hold a password).
    let p = problems(&format!(
        "{base}queue = \"q\"\nurl = \"http://u:hunter2@h/\"\npath = \"v1/x\"\nprefetch = 0\nmax_attempts = 0\nbackoff = \"0s\"\n"
    ));
    let url = problem(&p, "amqp[0].url");
    assert!(!url.message.contains("hunter2"), "{}", url.message);
    assert!(url.message.contains("amqp or amqps"), "{}", url.message);
    let p = problems(&format!(
        "{base}queue = \"q\"\nurl = \"amqp://h\"\npath = \"v1/x\"\nprefetch = 0\nmax_attempts = 0\nbackoff = \"0s\"\n"
    ));
    for key in [
        "amqp[0].path",
        "amqp[0].prefetch",
        "amqp[0].max_attempts",
        "amqp[0].backoff",
    ] {
        problem(&p, key);
    }
    let p = problems(&format!(
        "{base}queue = \"q\"\nurl = \"amqp://h\"\nca_file = \"/nonexistent/ca.pem\"\n"
    ));
    assert!(problem(&p, "amqp[0].ca_file")
        .message
        .contains("only for amqps://"));
    let p = problems(&format!(
        "{base}queue = \"q\"\nurl = \"amqps://h\"\nca_file = \"/nonexistent/ca.pem\"\n"
    ));
    problem(&p, "amqp[0].ca_file");
    let two = format!(
        "{base}queue = \"q\"\nurl = \"amqp://h\"\n[[amqp]]\nqueue = \"q\"\nurl = \"amqp://h\"\n"
    );
    assert!(problem(&problems(&two), "amqp[1].name")
        .message
        .contains("names another [[amqp]]"));
}

#[test]
fn amqp_defaults_and_the_url_from_the_environment() {
    std::env::set_var(
        "BALLAST_TEST_AMQP_URL",
        "amqp://ballast:pw-xyz@127.0.0.1:5673/%2f",
    );
    let c = parse(
        "t.toml",
        &format!("{MINIMAL}[[amqp]]\nqueue = \"requests\"\nurl_env = \"BALLAST_TEST_AMQP_URL\"\n"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let a = &c.amqp[0];
    assert_eq!(a.name, "requests");
    assert_eq!(a.broker, "amqp://127.0.0.1:5673/%2F");
    assert_eq!(a.path, "/v1/chat/completions");
    assert_eq!(a.dead_letter_exchange, "requests.dead");
    assert!(a.declare);
    assert_eq!((a.prefetch, a.max_reply_bytes), (32, 1 << 20));
    assert_eq!(
        (
            a.policy.max_attempts,
            a.policy.backoff,
            a.policy.backoff_max
        ),
        (3, secs(1), secs(30))
    );
    // The password is never shown.
    assert!(!format!("{a:?}").contains("pw-xyz"));
}
