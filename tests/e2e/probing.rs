//! Bringing recovered servers back quickly: `pool.probe_interval` lets an
//! ejected server take one real request after a short, doubling wait, a
//! failed probe is retried elsewhere at once, and a passing health check
//! admits one probe rather than all traffic.

use crate::harness::*;
use ballast::sim::{Fault, FaultKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_server_is_back_long_before_fail_timeout_and_clients_see_no_error() {
    let flaky = sim("flaky").await;
    let steady = sim("steady").await;
    let server = flaky.addr().to_string();
    let gw = Gateway::one_pool(
        &[server.clone(), steady.addr().to_string()],
        "max_fails = 1\nfail_timeout = \"60s\"\nprobe_interval = \"200ms\"",
    )
    .await;
    // 502 is retried by default: the ejection itself is invisible.
    flaky.set_fault(Fault::new(FaultKind::Status {
        code: 502,
        retry_after: None,
    }));
    let mut sent = 0;
    while gw.server_status(&server).await["state"] != "ejected" {
        let r = gw.client.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        sent += 1;
        assert!(sent < 200, "the failing server was never tried");
    }
    // Still failing, now with a 500 (not in retry.on): each probe fails
    // and is retried on the other server; the client never sees it.
    flaky.set_fault(status(500));
    let before = flaky.stats().requests;
    while flaky.stats().requests < before + 2 {
        let r = gw.client.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 200, "a failed probe reached the client");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(gw.server_status(&server).await["state"], "ejected");

    // It recovers: the next probe (at most 800 ms away, not 60 s) brings it
    // back, and it serves again.
    flaky.set_fault(Fault::default());
    let served = flaky.stats().requests;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while gw.server_status(&server).await["state"] != "up" {
        let r = gw.client.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            std::time::Instant::now() < deadline,
            "the server was not probed back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for _ in 0..20 {
        let r = gw.client.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert!(
        flaky.stats().requests > served + 1,
        "back, but given no traffic"
    );
    assert_eq!(
        gw.metric("ballast_upstream_ejections_total", &[("server", &server)])
            .await,
        3.0,
        "one ejection and two failed probes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passing_health_check_lets_one_probe_through_not_all_traffic() {
    // /health passes while the API answers 502: each pass admits one
    // request, never a burst of max_fails.
    let sick = sim("sick").await;
    let steady = sim("steady").await;
    let server = sick.addr().to_string();
    let gw = Gateway::one_pool(
        &[server.clone(), steady.addr().to_string()],
        "max_fails = 3\nfail_timeout = \"60s\"\n[pool.health]\npath = \"/health\"\ninterval = \"100ms\"\nrise = 1\nfall = 1",
    )
    .await;
    sick.set_fault(Fault::new(FaultKind::Status {
        code: 502,
        retry_after: None,
    }));
    let mut sent = 0;
    while gw.server_status(&server).await["state"] != "ejected" {
        let r = gw.client.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        sent += 1;
        assert!(sent < 200);
    }
    let traffic = sick.stats().requests;
    let checks = sick.stats().health_checks;
    for _ in 0..3 {
        let statuses = burst_round(&gw).await;
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }
    let passes = sick.stats().health_checks - checks;
    let probes = sick.stats().requests - traffic;
    assert!(passes >= 3, "health checks ran ({passes})");
    assert!(
        probes <= passes + 1,
        "{probes} requests reached a server whose API fails, over {passes} passing health checks"
    );
}

/// Twenty requests, a few at a time, spread over a few health intervals.
async fn burst_round(gw: &Gateway) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..5 {
        let wave = (0..4).map(|_| gw.client.get(gw.url("/x")).send());
        for r in futures_util::future::join_all(wave).await {
            out.push(r.unwrap().status().as_u16());
        }
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    }
    out
}
