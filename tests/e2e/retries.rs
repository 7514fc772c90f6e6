//! Retries: what the client got, and what every backend saw (how many
//! attempts, and when).

use crate::harness::*;
use ballast::sim::{Fault, FaultKind};
use futures_util::future::join_all;
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

fn busy(code: u16, retry_after: Option<&str>) -> Fault {
    Fault::new(FaultKind::Status {
        code,
        retry_after: retry_after.map(str::to_owned),
    })
}

fn arrivals(s: &ballast::sim::SimServer) -> Vec<u64> {
    s.stats().log.iter().map(|r| r.at_ms).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_backend_is_retried_elsewhere_and_left_to_cool() {
    let a = sim("a").await;
    let b = sim("b").await;
    a.set_fault(busy(503, Some("10")));
    let sa = a.addr().to_string();
    let gw = Gateway::one_pool(&[sa.clone(), b.addr().to_string()], "max_fails = 0").await;

    for _ in 0..30 {
        let r = gw.client.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 200, "the 503 must never reach the client");
    }
    // A was picked at some point, said "busy for 10s", and was left alone.
    assert_eq!(
        a.stats().requests,
        1,
        "the busy backend saw exactly one attempt"
    );
    assert_eq!(b.stats().requests, 30);
    let st = gw.server_status(&sa).await;
    assert_eq!(st["state"], "cooling", "{st}");
    assert_eq!(
        gw.metric("ballast_upstream_up", &[("server", &sa)]).await,
        0.0
    );
    let left = gw
        .metric("ballast_upstream_cooldown_seconds", &[("server", &sa)])
        .await;
    assert!(left > 5.0 && left <= 10.0, "cooldown left {left}");
    assert_eq!(
        gw.metric(
            "ballast_retries_total",
            &[("route", "r"), ("reason", "503")]
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_on_the_only_server_is_honoured() {
    let a = sim("a").await;
    a.set_fault(busy(429, Some("2")).times(1));
    let gw = Gateway::start(&format!(
        "{}{}",
        pool_toml("p", &[a.addr().to_string()], ""),
        route_toml("r", "/", "p", "[route.retry]\nbackoff_base = \"100ms\"")
    ))
    .await;

    let started = Instant::now();
    let first = tokio::spawn({
        let (c, u) = (gw.client.clone(), gw.url("/first"));
        async move { c.get(u).send().await.unwrap().status() }
    });
    // Once the backend has said 429, send more requests during the cooldown.
    wait_until("the backend's 429", || a.stats().requests == 1).await;
    let others = join_all((0..3).map(|_| gw.client.get(gw.url("/other")).send())).await;
    for r in others {
        assert_eq!(r.unwrap().status(), 200);
    }
    assert_eq!(first.await.unwrap(), 200);
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "answered before the backend's Retry-After"
    );

    let at = arrivals(&a);
    assert_eq!(at.len(), 5, "one 429, then the retry and the three others");
    for later in &at[1..] {
        assert!(
            *later >= at[0] + 1990,
            "request inside the cooldown: {at:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_429_backs_off_with_growing_delays_then_tells_the_truth() {
    let a = sim("a").await;
    a.set_fault(busy(429, None));
    let gw = Gateway::start(&format!(
        "{}{}",
        pool_toml("p", &[a.addr().to_string()], ""),
        route_toml(
            "r",
            "/",
            "p",
            "[route.retry]\nattempts = 3\nbackoff_base = \"1s\"\nbackoff_max = \"8s\"\njitter = 0.5"
        )
    ))
    .await;

    let r = gw.client.get(gw.url("/x")).send().await.unwrap();
    assert_eq!(
        r.status(),
        429,
        "out of attempts: the busy status, not a 502"
    );
    let after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=8).contains(&after), "retry-after {after}");

    let at = arrivals(&a);
    assert_eq!(at.len(), 3, "never more than `attempts` tries: {at:?}");
    let (g1, g2) = (at[1] - at[0], at[2] - at[1]);
    // Wait k is base·2^k plus up to 50%: [1s, 1.5s] then [2s, 3s] (plus
    // scheduling slack on top).
    assert!((1000..2000).contains(&g1), "first wait {g1}ms");
    assert!((2000..3500).contains(&g2), "second wait {g2}ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_retried_transparently_for_get_and_post() {
    let live = sim("live").await;
    let dead = dead_addr();
    // Half the requests try the dead server first; a budget of 1.0 lets
    // every one of them retry (the budget has its own test).
    let gw = Gateway::start(&format!(
        "{}{}",
        pool_toml(
            "p",
            &[dead.clone(), live.addr().to_string()],
            "max_fails = 0"
        ),
        route_toml("r", "/", "p", "[route.retry]\nbudget = 1.0")
    ))
    .await;

    for i in 0..10 {
        let r = gw.client.get(gw.url("/get")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let body = format!("{{\"n\":{i}}}");
        let r = gw
            .client
            .post(gw.url("/post"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let echo: serde_json::Value = r.json().await.unwrap();
        assert_eq!(echo["body_len"], body.len());
    }
    assert_eq!(live.stats().requests, 20);
    let m = gw.metrics().await;
    let refused = metric_value(
        &m,
        "ballast_upstream_attempts_total",
        &[("server", &dead), ("outcome", "connect_error")],
    );
    assert!(refused > 0.0, "the dead server was never tried");
    let retries = metric_value(&m, "ballast_retries_total", &[("reason", "connect_error")]);
    assert_eq!(retries, refused, "every refused attempt was retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_is_replayed_byte_identical() {
    let a = sim("a").await;
    a.set_fault(busy(503, Some("0")).times(1));
    let gw = Gateway::start(&format!(
        "{}{}",
        pool_toml("p", &[a.addr().to_string()], "max_fails = 0"),
        route_toml("r", "/", "p", "[route.retry]\nbackoff_base = \"10ms\"")
    ))
    .await;
    let body: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i * 7 + i / 1000) as u8)
        .collect();
    let want = format!("{:x}", Sha256::digest(&body));

    let r = gw
        .client
        .post(gw.url("/upload"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let log = a.stats().log;
    assert_eq!(log.len(), 2, "one 503, one replay");
    for rec in &log {
        assert_eq!(rec.body_len, 1024 * 1024);
        assert_eq!(rec.body_sha256, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_and_reset_are_retried_only_when_listed() {
    let a = sim("a").await;
    let fast = "[route.retry]\nbackoff_base = \"10ms\"\n[route.timeouts]\nfirst_byte = \"300ms\"";
    let gw = Gateway::start(&format!(
        "{}{}",
        pool_toml("p", &[a.addr().to_string()], "max_fails = 0"),
        route_toml("r", "/", "p", fast)
    ))
    .await;

    // Default `on`: the request may have been processed, so no retry.
    a.set_fault(Fault::new(FaultKind::Reset).times(1));
    let r = gw.client.get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(a.stats().requests, 1, "a reset was retried");

    a.reset_stats();
    a.set_fault(Fault::new(FaultKind::Hang).times(1));
    let r = gw.client.get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(a.stats().requests, 1, "a timeout was retried");
    drop(gw);

    // Listed: retried (on the same server, after a backoff).
    let listed = format!("{fast}\n").replace(
        "[route.retry]\n",
        "[route.retry]\non = [\"reset\", \"timeout\"]\n",
    );
    let gw = Gateway::start(&format!(
        "{}{}",
        pool_toml("p", &[a.addr().to_string()], "max_fails = 0"),
        route_toml("r", "/", "p", &listed)
    ))
    .await;
    for kind in [FaultKind::Reset, FaultKind::Hang] {
        a.reset_stats();
        a.set_fault(Fault::new(kind).times(1));
        let r = gw.client.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(a.stats().requests, 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_total_deadline_cuts_a_backoff_chain() {
    let a = sim("a").await;
    a.set_fault(busy(502, None));
    let gw = Gateway::start(&format!(
        "{}{}",
        pool_toml("p", &[a.addr().to_string()], "max_fails = 0"),
        route_toml(
            "r",
            "/",
            "p",
            "[route.retry]\nattempts = 10\nbackoff_base = \"400ms\"\njitter = 0\n\
             [route.timeouts]\ntotal = \"1500ms\""
        )
    ))
    .await;

    let started = Instant::now();
    let r = gw.client.get(gw.url("/x")).send().await.unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 504);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "deadline_exceeded");
    // Tries at 0, 0.4s and 1.2s; the next wait (1.6s) would end past the
    // deadline, so the client hears at once rather than after it.
    assert_eq!(a.stats().requests, 3);
    assert!(
        took < Duration::from_millis(2500),
        "answered late: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stay_within_the_budget_when_the_whole_pool_fails() {
    let a = sim("a").await;
    let b = sim("b").await;
    for s in [&a, &b] {
        s.set_fault(busy(503, None));
    }
    let gw = Gateway::start(&format!(
        "{}{}",
        pool_toml("p", &[a.addr().to_string(), b.addr().to_string()], "max_fails = 0"),
        route_toml(
            "r",
            "/",
            "p",
            "[route.retry]\nattempts = 3\nbudget = 0.2\nbackoff_base = \"5ms\"\nbackoff_max = \"10ms\""
        )
    ))
    .await;

    let requests = 200u64;
    let workers = (0..4).map(|w| {
        let (c, u) = (gw.client.clone(), gw.url("/x"));
        async move {
            for _ in 0..requests / 4 {
                let r = c.get(&u).send().await.unwrap();
                assert_eq!(r.status(), 503, "worker {w}");
                assert!(r.headers().contains_key("retry-after"));
            }
        }
    });
    join_all(workers).await;

    let attempts = a.stats().requests + b.stats().requests;
    let retries = attempts - requests;
    // 20% of the first attempts plus the floor of 10 per 10 s window (the
    // run is shorter than two windows): without a budget it would be 400.
    assert!(
        retries <= 40 + 20,
        "{retries} retries for {requests} requests"
    );
    assert!(retries >= 10, "the floor allows some retries: {retries}");
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(&m, "ballast_retries_total", &[("reason", "503")]),
        retries as f64
    );
    assert!(
        metric_value(
            &m,
            "ballast_retries_total",
            &[("reason", "budget_exhausted")]
        ) > 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_waits_for_a_busy_healthy_server_rather_than_failing() {
    let flaky = sim("flaky").await;
    flaky.set_fault(busy(503, None));
    let good = sim("good").await;
    good.set_fault(latency(Duration::from_millis(300)));
    let gw = Gateway::start(&format!(
        "{}{}",
        pool_toml(
            "p",
            &[flaky.addr().to_string(), good.addr().to_string()],
            "max_conns = 1\nmax_fails = 0"
        ),
        route_toml("r", "/", "p", "[route.retry]\nattempts = 2")
    ))
    .await;
    // Requests that land on the flaky server are retried on the good one,
    // which is at its cap: the retry queues for it instead of failing.
    let both = join_all((0..2).map(|_| gw.client.get(gw.url("/x")).send())).await;
    for r in both {
        assert_eq!(r.unwrap().status(), 200);
    }
    let failed = flaky.stats().requests;
    assert!(failed >= 1, "the flaky server was never tried");
    assert_eq!(
        gw.metric("ballast_retries_total", &[("reason", "503")])
            .await,
        failed as f64,
        "every 503 was retried"
    );
    assert_eq!(good.stats().requests, 2);
    assert!(good.stats().peak_in_flight <= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_the_backend_may_have_received_is_never_sent_twice() {
    let a = sim("a").await;
    let gw = Gateway::one_pool(&[a.addr().to_string()], "max_fails = 0").await;
    // Warm a pooled connection.
    assert_eq!(
        gw.client
            .get(gw.url("/warm"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // The backend takes the POST, works on it, then resets the (pooled)
    // connection: `reset` is not in retry.on, so the client is told.
    a.set_fault(Fault {
        kind: FaultKind::Reset,
        latency: Some(Duration::from_millis(200)),
        times: Some(1),
    });
    let r = gw
        .client
        .post(gw.url("/work"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let posts = a.stats().log.iter().filter(|r| r.method == "POST").count();
    assert_eq!(posts, 1, "the POST was replayed");
    assert_eq!(
        gw.metric("ballast_upstream_attempts_total", &[("outcome", "reset")])
            .await,
        1.0
    );
}
