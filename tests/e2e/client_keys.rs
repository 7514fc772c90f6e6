//! Client keys and their limits: who may call a route that requires a key,
//! and how much (requests and tokens per minute, requests in flight).

use crate::harness::*;
use ballast::keys::hash_hex;
use std::path::PathBuf;
use std::time::Duration;

/// A key file in a temp dir: `(name, key, extra lines)` per key.
struct KeyFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl KeyFile {
    fn new(keys: &[(&str, &str, &str)]) -> KeyFile {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        let f = KeyFile { _dir: dir, path };
        f.write(keys);
        f
    }

    fn write(&self, keys: &[(&str, &str, &str)]) {
        let text: String = keys
            .iter()
            .map(|(name, key, extra)| {
                format!(
                    "[[key]]\nname = \"{name}\"\nsha256 = \"{}\"\n{extra}\n",
                    hash_hex(key)
                )
            })
            .collect();
        std::fs::write(&self.path, text).unwrap();
    }

    fn auth(&self) -> String {
        format!("[auth]\nkeys_file = \"{}\"\n\n", self.path.display())
    }

    /// A gateway with these keys whose OpenAI route `chat` (`/v1/`) in
    /// front of `backend` requires one.
    async fn gateway(&self, backend: &ballast::sim::SimServer) -> Gateway {
        Gateway::start(&format!(
            "{}{}{}",
            self.auth(),
            pool_toml("p", &[backend.addr().to_string()], ""),
            route_toml("chat", "/v1/", "p", "openai = true\nrequire_key = true")
        ))
        .await
    }
}

/// A key nobody could guess or find by accident in other output.
fn secret(tag: &str) -> String {
    format!("sk-{tag}-{:016x}", rand_u64())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

async fn chat(gw: &Gateway, key: Option<(&str, &str)>) -> reqwest::Response {
    let mut r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .body(r#"{"model":"sim-model","messages":[{"role":"user","content":"0123456789abcdef0123456789abcdef"}]}"#);
    if let Some((header, value)) = key {
        r = r.header(header, value);
    }
    r.send().await.unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_that_requires_a_key_answers_only_to_known_keys() {
    let a = sim("a").await;
    let alpha = secret("alpha");
    let keys = KeyFile::new(&[("alpha", &alpha, "")]);
    let gw = keys.gateway(&a).await;

    let missing = chat(&gw, None).await;
    assert_eq!(missing.status(), 401);
    assert_eq!(header(&missing, "www-authenticate"), "Bearer");
    let body: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "missing_api_key", "{body}");
    let bearer_wrong = format!("Bearer {}", secret("wrong"));
    let wrong = chat(&gw, Some(("authorization", &bearer_wrong))).await;
    assert_eq!(wrong.status(), 401);
    let body: serde_json::Value = wrong.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
    let basic = chat(&gw, Some(("authorization", "Basic dXNlcjpwYXNz"))).await;
    assert_eq!(basic.status(), 401);
    assert_eq!(a.stats().requests, 0, "nothing refused reached the backend");

    let bearer = format!("Bearer {alpha}");
    let ok = chat(&gw, Some(("authorization", &bearer))).await;
    assert_eq!(ok.status(), 200);
    let ok = chat(&gw, Some(("x-api-key", &alpha))).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(a.stats().requests, 2);
    // The client's key is the gateway's business: no backend sees it.
    for rec in a.stats().log {
        assert!(recorded_header(&rec, "authorization").is_empty(), "{rec:?}");
        assert!(recorded_header(&rec, "x-api-key").is_empty(), "{rec:?}");
    }

    let m = gw.metrics().await;
    assert_eq!(
        metric_value(&m, "ballast_auth_failures_total", &[("reason", "missing")]),
        1.0
    );
    assert_eq!(
        metric_value(&m, "ballast_auth_failures_total", &[("reason", "invalid")]),
        2.0
    );
    assert_eq!(
        metric_value(&m, "ballast_key_requests_total", &[("key", "alpha")]),
        2.0
    );
    assert!(
        metric_value(
            &m,
            "ballast_key_tokens_total",
            &[("key", "alpha"), ("kind", "prompt")]
        ) >= 16.0
    );
    assert!(
        metric_value(
            &m,
            "ballast_key_tokens_total",
            &[("key", "alpha"), ("kind", "completion")]
        ) > 0.0
    );
    let st = gw.status_json().await;
    assert_eq!(st["keys"][0]["name"], "alpha", "{st}");
    let log = gw.log();
    assert!(
        log.lines()
            .any(|l| l.contains("ballast::access") && l.contains("key=\"alpha\"")),
        "the access log names the key: {log}"
    );

    // Names everywhere, keys and their hashes nowhere.
    let status = st.to_string();
    for text in [gw.log(), m, status] {
        assert!(!text.contains(&alpha), "the key leaked");
        assert!(!text.contains(&hash_hex(&alpha)), "the key's hash leaked");
        assert!(
            !text.contains(bearer_wrong.trim_start_matches("Bearer ")),
            "a wrong key leaked"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_takes_no_slot_no_queue_place_and_its_body_is_not_read() {
    let a = sim("a").await;
    a.set_fault(latency(Duration::from_secs(3)));
    let alpha = secret("alpha");
    let keys = KeyFile::new(&[("alpha", &alpha, "")]);
    let gw = Gateway::start(&format!(
        "{}{}{}",
        keys.auth(),
        pool_toml(
            "p",
            &[a.addr().to_string()],
            "max_conns = 1\n[pool.queue]\nmax_depth = 10\nmax_wait = \"10s\"\n"
        ),
        route_toml("chat", "/v1/", "p", "require_key = true")
    ))
    .await;
    // The one slot is busy.
    let busy = tokio::spawn({
        let client = gw.client.clone();
        let url = gw.url("/v1/models");
        let key = alpha.clone();
        async move {
            client
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .map(|r| r.status())
        }
    });
    gw.wait_server(&a.addr().to_string(), "busy", |s| s["outstanding"] == 1)
        .await;

    // A head that announces a megabyte and sends none of it: the 401
    // comes at once, without waiting for the body or for the slot.
    let reply = raw_exchange(
        gw.addr,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status(), Some(401), "{}", reply.text());
    assert_eq!(
        gw.metric("ballast_queue_depth", &[("pool", "p")]).await,
        0.0
    );
    assert_eq!(
        gw.metric(
            "ballast_shed_total",
            &[("pool", "p"), ("reason", "queue_full")]
        )
        .await,
        0.0
    );
    assert_eq!(
        a.stats().requests,
        1,
        "only the busy request reached the backend"
    );
    assert_eq!(busy.await.unwrap().unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_limit_answers_429_with_what_openai_clients_read() {
    let a = sim("a").await;
    let (rpm, tpm, conc) = (secret("rpm"), secret("tpm"), secret("conc"));
    let keys = KeyFile::new(&[
        ("by-requests", &rpm, "rpm = 2"),
        ("by-tokens", &tpm, "tpm = 5"),
        ("by-concurrency", &conc, "max_concurrent = 1"),
    ]);
    let gw = keys.gateway(&a).await;

    // Requests per minute: two, then 429 until the minute turns.
    away_from_a_window_edge().await;
    for left in ["1", "0"] {
        let r = chat(&gw, Some(("x-api-key", &rpm))).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-ratelimit-limit-requests"), "2");
        assert_eq!(header(&r, "x-ratelimit-remaining-requests"), left);
    }
    let r = chat(&gw, Some(("x-api-key", &rpm))).await;
    assert_eq!(r.status(), 429);
    let after: u64 = header(&r, "retry-after").parse().unwrap();
    assert!((1..=60).contains(&after), "{after}");
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "0");
    assert!(header(&r, "x-ratelimit-reset-requests").ends_with('s'));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    assert_eq!(body["error"]["type"], "requests", "{body}");

    // Tokens per minute: the first request's prompt (32 characters, about
    // 8 tokens) uses the five up; the next is refused.
    let r = chat(&gw, Some(("x-api-key", &tpm))).await;
    assert_eq!(r.status(), 200);
    let r = chat(&gw, Some(("x-api-key", &tpm))).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "x-ratelimit-limit-tokens"), "5");
    assert_eq!(header(&r, "x-ratelimit-remaining-tokens"), "0");
    assert!(!header(&r, "x-ratelimit-reset-tokens").is_empty());
    assert!(!header(&r, "retry-after").is_empty());
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "tokens", "{body}");

    // Requests in flight: one at a time.
    a.set_fault(latency(Duration::from_secs(2)));
    let first = tokio::spawn({
        let client = gw.client.clone();
        let url = gw.url("/v1/models");
        let key = conc.clone();
        async move {
            client
                .get(url)
                .header("x-api-key", key)
                .send()
                .await
                .map(|r| r.status())
        }
    });
    gw.wait_server(&a.addr().to_string(), "busy", |s| s["outstanding"] == 1)
        .await;
    let r = chat(&gw, Some(("x-api-key", &conc))).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after"), "1");
    assert_eq!(first.await.unwrap().unwrap(), 200);
    a.set_fault(latency(Duration::ZERO));
    // Its place came back when it ended.
    let r = chat(&gw, Some(("x-api-key", &conc))).await;
    assert_eq!(r.status(), 200);

    let m = gw.metrics().await;
    for (key, reason) in [
        ("by-requests", "rpm"),
        ("by-tokens", "tpm"),
        ("by-concurrency", "concurrency"),
    ] {
        assert_eq!(
            metric_value(
                &m,
                "ballast_key_rejections_total",
                &[("key", key), ("reason", reason)]
            ),
            1.0,
            "{key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_may_be_held_to_routes_and_models_and_carry_a_priority() {
    let a = sim("a").await;
    let narrow = secret("narrow");
    let keys = KeyFile::new(&[(
        "narrow",
        &narrow,
        "routes = [\"chat\"]\nmodels = [\"sim-model\"]\npriority = \"high\"",
    )]);
    let gw = Gateway::start(&format!(
        "{}{}{}{}",
        keys.auth(),
        pool_toml("p", &[a.addr().to_string()], ""),
        route_toml("chat", "/v1/", "p", "openai = true\nrequire_key = true"),
        route_toml("batch", "/batch/", "p", "require_key = true"),
    ))
    .await;
    assert_eq!(chat(&gw, Some(("x-api-key", &narrow))).await.status(), 200);
    let other_model = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .header("x-api-key", &narrow)
        .body(r#"{"model":"other","messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(other_model.status(), 403);
    let body: serde_json::Value = other_model.json().await.unwrap();
    assert_eq!(body["error"]["code"], "permission_denied", "{body}");
    let other_route = gw
        .client
        .get(gw.url("/batch/x"))
        .header("x-api-key", &narrow)
        .send()
        .await
        .unwrap();
    assert_eq!(other_route.status(), 403);
    assert_eq!(a.stats().requests, 1);
    let st = gw.status_json().await;
    assert_eq!(st["keys"][0]["priority"], "high", "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_reload_without_a_restart() {
    let a = sim("a").await;
    let (old, new) = (secret("old"), secret("new"));
    let keys = KeyFile::new(&[("old", &old, "")]);
    let gw = Gateway::start(&format!(
        "{}{}{}",
        keys.auth(),
        pool_toml("p", &[a.addr().to_string()], ""),
        route_toml("chat", "/v1/", "p", "require_key = true")
    ))
    .await;
    assert_eq!(chat(&gw, Some(("x-api-key", &old))).await.status(), 200);
    assert_eq!(chat(&gw, Some(("x-api-key", &new))).await.status(), 401);

    keys.write(&[("new", &new, "")]);
    let (code, body) = gw.reload().await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(chat(&gw, Some(("x-api-key", &new))).await.status(), 200);
    assert_eq!(chat(&gw, Some(("x-api-key", &old))).await.status(), 401);

    // A broken key file is refused as a whole: the keys in force stay.
    std::fs::write(&keys.path, "[[key]]\nname = \"x\"\nsha256 = \"nothex\"\n").unwrap();
    let (code, body) = gw.reload().await;
    assert_eq!(code, 400, "{body}");
    assert!(body.to_string().contains("sha256"), "{body}");
    assert_eq!(chat(&gw, Some(("x-api-key", &new))).await.status(), 200);
    for text in [
        gw.log(),
        gw.metrics().await,
        gw.status_json().await.to_string(),
    ] {
        assert!(!text.contains(&old) && !text.contains(&new), "a key leaked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_client_sees_rate_limit_and_authentication_errors() {
    let a = sim("a").await;
    let key = secret("sdk");
    let keys = KeyFile::new(&[("sdk", &key, "rpm = 1")]);
    let gw = keys.gateway(&a).await;
    away_from_a_window_edge().await;
    let limited = python_client(&gw, "rate_limited", &key).await;
    assert_eq!(limited["second"], "RateLimitError", "{limited}");
    assert_eq!(limited["status"], 429);
    assert_eq!(limited["remaining"], "0");
    assert_eq!(limited["code"], "rate_limit_exceeded");
    assert!(
        limited["retry_after"]
            .as_str()
            .is_some_and(|s| s.parse::<u64>().is_ok()),
        "{limited}"
    );
    let refused = python_client(&gw, "unauthorized", &secret("nope")).await;
    assert_eq!(refused["first"], "AuthenticationError", "{refused}");
    assert_eq!(refused["code"], "invalid_api_key");
}

async fn python_client(gw: &Gateway, scenario: &str, key: &str) -> serde_json::Value {
    crate::openai_client::run_env(gw, scenario, &[("BALLAST_TEST_KEY", key)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_priority_orders_the_queue() {
    let a = sim("a").await;
    a.set_fault(latency(Duration::from_millis(400)));
    let (batch, urgent) = (secret("batch"), secret("urgent"));
    let keys = KeyFile::new(&[
        ("batch", &batch, "priority = \"low\""),
        ("urgent", &urgent, "priority = \"high\""),
    ]);
    let gw = Gateway::start(&format!(
        "{}{}{}",
        keys.auth(),
        pool_toml("p", &[a.addr().to_string()], "max_conns = 1"),
        route_toml("r", "/", "p", "require_key = true")
    ))
    .await;
    let send = |path: &str, key: &str| {
        let req = gw.client.get(gw.url(path)).header("x-api-key", key);
        tokio::spawn(async move { req.send().await.unwrap().status() })
    };
    let first = send("/first", &batch);
    gw.wait_metric("ballast_upstream_outstanding", &[("pool", "p")], 1.0)
        .await;
    let mut waiting = Vec::new();
    for (i, (path, key)) in [
        ("/batch1", &batch),
        ("/batch2", &batch),
        ("/urgent", &urgent),
    ]
    .into_iter()
    .enumerate()
    {
        waiting.push(send(path, key));
        gw.wait_metric("ballast_queue_depth", &[("pool", "p")], (i + 1) as f64)
            .await;
    }
    assert_eq!(first.await.unwrap(), 200);
    for w in waiting {
        assert_eq!(w.await.unwrap(), 200);
    }
    let paths: Vec<String> = a.stats().log.iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/first", "/urgent", "/batch1", "/batch2"]);
}
