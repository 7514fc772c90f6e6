//! Active health checks: `fall` failures take a server out, `rise` passes
//! bring it back, and /status and ballast_upstream_up show it.

use crate::harness::*;
use ballast::sim::HealthMode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_take_a_server_out_and_bring_it_back() {
    let a = sim("a").await;
    let b = sim("b").await;
    let (sa, sb) = (a.addr().to_string(), b.addr().to_string());
    let gw = Gateway::start(&format!(
        "{}[pool.health]\npath = \"/health\"\ninterval = \"50ms\"\ntimeout = \"200ms\"\nrise = 2\nfall = 2\n{}",
        pool_toml("p", &[sa.clone(), sb.clone()], ""),
        route_toml("r", "/", "p", "")
    ))
    .await;

    a.set_health(HealthMode::Fail);
    gw.wait_server(&sa, "down", |s| s["state"] == "down").await;
    assert_eq!(
        gw.metric("ballast_upstream_up", &[("server", &sa)]).await,
        0.0
    );
    assert_eq!(
        gw.metric("ballast_upstream_up", &[("server", &sb)]).await,
        1.0
    );
    let checks = a.stats().health_checks;
    assert!(checks >= 2, "the prober hit /health ({checks})");

    // While down, traffic goes only to b.
    a.reset_stats();
    for _ in 0..20 {
        let r = gw.client.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(a.stats().requests, 0);
    assert_eq!(b.stats().requests, 20);

    a.set_health(HealthMode::Ok);
    gw.wait_server(&sa, "up", |s| s["state"] == "up").await;
    assert_eq!(
        gw.metric("ballast_upstream_up", &[("server", &sa)]).await,
        1.0
    );
    // Checks never show up as traffic.
    assert_eq!(a.stats().requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_health_endpoint_times_out_and_readyz_follows() {
    let a = sim("a").await;
    let sa = a.addr().to_string();
    let gw = Gateway::start(&format!(
        "{}[pool.health]\ninterval = \"50ms\"\ntimeout = \"100ms\"\nrise = 1\nfall = 1\n{}",
        pool_toml("p", std::slice::from_ref(&sa), ""),
        route_toml("r", "/", "p", "")
    ))
    .await;
    let ready = gw.client.get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    a.set_health(HealthMode::Hang);
    gw.wait_server(&sa, "down", |s| s["state"] == "down").await;
    let ready = gw.client.get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains('r'));

    let r = gw.client.get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));

    a.set_health(HealthMode::Ok);
    gw.wait_server(&sa, "up", |s| s["state"] == "up").await;
    let ready = gw.client.get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}
