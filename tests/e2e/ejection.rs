//! Passive ejection: nginx `max_fails` / `fail_timeout` semantics.

use crate::harness::*;

fn connect_errors(metrics: &str, server: &str) -> f64 {
    metric_value(
        metrics,
        "ballast_upstream_attempts_total",
        &[("server", server), ("outcome", "connect_error")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_backend_is_ejected_then_probed_once() {
    let live = sim("live").await;
    let dead = dead_addr();
    let servers = [live.addr().to_string(), dead.clone()];
    let gw = Gateway::one_pool(&servers, "max_fails = 2\nfail_timeout = \"2s\"").await;

    // Until the dead server has failed twice, some requests try it first;
    // every one is retried on the live server, so the client never notices.
    let mut sent = 0;
    while connect_errors(&gw.metrics().await, &dead) < 2.0 {
        let r = gw.client.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        sent += 1;
        assert!(sent < 200, "dead server was never tried");
    }
    let st = gw.server_status(&dead).await;
    assert_eq!(st["state"], "ejected", "{st}");
    assert_eq!(
        gw.metric("ballast_upstream_up", &[("server", &dead)]).await,
        0.0
    );
    assert_eq!(
        gw.metric("ballast_upstream_ejections_total", &[("server", &dead)])
            .await,
        1.0
    );

    // While ejected it gets no traffic at all.
    for _ in 0..20 {
        let r = gw.client.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let still = gw.server_status(&dead).await;
    let m = gw.metrics().await;
    assert_eq!(connect_errors(&m, &dead), 2.0);
    assert_eq!(
        still["state"], "ejected",
        "ejection ended during the burst: {still}"
    );

    // After fail_timeout exactly one request probes it (and fails, so it is
    // ejected again); concurrent requests go to the live server.
    gw.wait_server(&dead, "probing", |s| s["state"] == "probing")
        .await;
    let burst = (0..10).map(|_| gw.client.get(gw.url("/x")).send());
    for r in futures_util::future::join_all(burst).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    let m = gw.metrics().await;
    assert_eq!(connect_errors(&m, &dead), 3.0, "exactly one probe");
    assert_eq!(gw.server_status(&dead).await["state"], "ejected");
    assert_eq!(
        metric_value(&m, "ballast_upstream_ejections_total", &[("server", &dead)]),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successful_probe_returns_the_server() {
    let flaky = sim("flaky").await;
    let mut fault = status(500);
    fault.times = Some(1);
    flaky.set_fault(fault);
    let server = flaky.addr().to_string();
    let gw = Gateway::one_pool(
        std::slice::from_ref(&server),
        "max_fails = 1\nfail_timeout = \"1s\"",
    )
    .await;

    let r = gw.client.get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 500, "the backend's own 500 is passed through");
    let r = gw.client.get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 503, "ejected: the gateway sheds");
    assert!(r.headers().contains_key("retry-after"));

    gw.wait_server(&server, "probing", |s| s["state"] == "probing")
        .await;
    let r = gw.client.get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let st = gw.server_status(&server).await;
    assert_eq!(st["state"], "up", "{st}");
    assert_eq!(st["fails"], 0);
    assert_eq!(flaky.stats().requests, 2, "one failure, one probe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_and_429_never_eject() {
    let busy = sim("busy").await;
    let server = busy.addr().to_string();
    // One attempt per request, and 429 cooldowns capped short: this test
    // is about ejection only.
    let gw = Gateway::start(&format!(
        "{}{}",
        pool_toml(
            "p",
            std::slice::from_ref(&server),
            "max_fails = 1\nfail_timeout = \"30s\""
        ),
        route_toml(
            "r",
            "/",
            "p",
            "[route.retry]\nattempts = 1\nbackoff_base = \"10ms\"\nbackoff_max = \"20ms\""
        )
    ))
    .await;

    for code in [429, 400, 404, 413] {
        busy.set_fault(status(code));
        for _ in 0..3 {
            let r = gw.client.get(gw.url("/x")).send().await.unwrap();
            assert_eq!(r.status(), code);
        }
    }
    let st = gw.server_status(&server).await;
    assert_eq!(st["state"], "up", "{st}");
    assert_eq!(st["fails"], 0);
    assert_eq!(
        busy.stats().requests,
        12,
        "every request reached the backend"
    );
    assert_eq!(
        gw.metric("ballast_upstream_ejections_total", &[("server", &server)])
            .await,
        0.0
    );
    // A single 502 with max_fails = 1 does eject: the rule is live.
    busy.set_fault(status(502));
    gw.client.get(gw.url("/x")).send().await.unwrap();
    assert_eq!(gw.server_status(&server).await["state"], "ejected");
}
