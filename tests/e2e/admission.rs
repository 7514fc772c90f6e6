//! Admission control: per-server caps, the pool's queue, shedding with an
//! honest 503, priorities, and fallback pools.

use crate::harness::*;
use ballast::sim::SimServer;
use futures_util::future::join_all;
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

async fn slow(name: &str, ms: u64) -> SimServer {
    let s = sim(name).await;
    s.set_fault(latency(Duration::from_millis(ms)));
    s
}

/// Poll `/metrics` until the sample satisfies `pred` (bounded).
async fn wait_metric_until(
    gw: &Gateway,
    name: &str,
    labels: &[(&str, &str)],
    pred: impl Fn(f64) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = gw.metric(name, labels).await;
        if pred(v) {
            return;
        }
        assert!(Instant::now() < deadline, "{name}{labels:?} stuck at {v}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_hold_and_the_queue_drains() {
    let a = slow("a", 300).await;
    let b = slow("b", 300).await;
    let gw = Gateway::one_pool(
        &[a.addr().to_string(), b.addr().to_string()],
        "max_conns = 4",
    )
    .await;

    let all = tokio::spawn({
        let (c, u) = (gw.client.clone(), gw.url("/x"));
        async move { join_all((0..20).map(|_| c.get(&u).send())).await }
    });
    wait_metric_until(&gw, "ballast_queue_depth", &[("pool", "p")], |d| d > 0.0).await;
    for r in all.await.unwrap() {
        assert_eq!(r.unwrap().status(), 200);
    }
    assert_eq!(a.stats().requests + b.stats().requests, 20);
    assert!(
        a.stats().peak_in_flight <= 4,
        "a saw {}",
        a.stats().peak_in_flight
    );
    assert!(
        b.stats().peak_in_flight <= 4,
        "b saw {}",
        b.stats().peak_in_flight
    );
    assert_eq!(
        gw.metric("ballast_queue_depth", &[("pool", "p")]).await,
        0.0
    );
    let waited = gw
        .metric("ballast_queue_wait_seconds_count", &[("pool", "p")])
        .await;
    assert!(
        waited >= 12.0,
        "only {waited} requests went through the queue"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_surplus_is_shed_at_once_with_retry_after() {
    let a = slow("a", 1000).await;
    let b = slow("b", 1000).await;
    let gw = Gateway::start(&format!(
        "{}[pool.queue]\nmax_depth = 5\nmax_wait = \"10s\"\n{}",
        pool_toml(
            "p",
            &[a.addr().to_string(), b.addr().to_string()],
            "max_conns = 4"
        ),
        route_toml("r", "/", "p", "")
    ))
    .await;

    let sent = Instant::now();
    let answers = join_all((0..30).map(|_| {
        let (c, u) = (gw.client.clone(), gw.url("/x"));
        async move {
            let r = c.get(&u).send().await.unwrap();
            let status = r.status().as_u16();
            let retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = r.text().await.unwrap();
            (status, retry_after, body, sent.elapsed())
        }
    }))
    .await;

    let ok: Vec<_> = answers.iter().filter(|a| a.0 == 200).collect();
    let shed: Vec<_> = answers.iter().filter(|a| a.0 == 503).collect();
    assert_eq!(ok.len(), 13, "8 in service + 5 queued");
    assert_eq!(shed.len(), 17);
    for (_, retry_after, body, _) in &shed {
        let secs: u64 = retry_after
            .as_deref()
            .expect("Retry-After")
            .parse()
            .unwrap();
        assert!(secs >= 1);
        assert!(body.contains("\"upstream_busy\""), "{body}");
    }
    // Turned away before any admitted request could even finish.
    let last_shed = shed.iter().map(|a| a.3).max().unwrap();
    let first_ok = ok.iter().map(|a| a.3).min().unwrap();
    assert!(
        last_shed < first_ok,
        "shedding waited: {last_shed:?} vs {first_ok:?}"
    );
    assert_eq!(
        gw.metric(
            "ballast_shed_total",
            &[("pool", "p"), ("reason", "queue_full")]
        )
        .await,
        17.0
    );
    assert!(a.stats().peak_in_flight <= 4 && b.stats().peak_in_flight <= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_client_that_leaves_frees_its_place() {
    let a = slow("a", 1500).await;
    let gw = Gateway::start(&format!(
        "{}[pool.queue]\nmax_depth = 1\n{}",
        pool_toml("p", &[a.addr().to_string()], "max_conns = 1"),
        route_toml("r", "/", "p", "")
    ))
    .await;

    let busy = tokio::spawn({
        let (c, u) = (gw.client.clone(), gw.url("/first"));
        async move { c.get(u).send().await.unwrap().status() }
    });
    wait_metric_until(&gw, "ballast_upstream_outstanding", &[("pool", "p")], |v| {
        v == 1.0
    })
    .await;
    // This one queues, then gives up.
    let leaver = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let gone = tokio::spawn({
        let u = gw.url("/leaver");
        async move { leaver.get(u).send().await.is_err() }
    });
    wait_metric_until(&gw, "ballast_queue_depth", &[("pool", "p")], |d| d == 1.0).await;
    assert!(gone.await.unwrap(), "the leaver got an answer");
    wait_metric_until(&gw, "ballast_queue_depth", &[("pool", "p")], |d| d == 0.0).await;

    // Its place is free: the next request queues instead of being shed.
    let r = gw.client.get(gw.url("/next")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(busy.await.unwrap(), 200);
    let paths: Vec<String> = a.stats().log.iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        paths,
        ["/first", "/next"],
        "the leaver never reached the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_priority_overtakes_low() {
    let a = slow("a", 400).await;
    let gw = Gateway::start(&format!(
        "{}{}",
        pool_toml("p", &[a.addr().to_string()], "max_conns = 1"),
        route_toml(
            "r",
            "/",
            "p",
            "priority = \"normal\"\npriority_header = \"x-ballast-priority\""
        )
    ))
    .await;

    let send = |path: &str, prio: &str| {
        let req = gw
            .client
            .get(gw.url(path))
            .header("x-ballast-priority", prio);
        tokio::spawn(async move { req.send().await.unwrap().status() })
    };
    let first = send("/first", "low");
    wait_metric_until(&gw, "ballast_upstream_outstanding", &[("pool", "p")], |v| {
        v == 1.0
    })
    .await;
    let mut waiting = Vec::new();
    for (i, (path, prio)) in [("/low1", "low"), ("/low2", "low"), ("/high", "high")]
        .into_iter()
        .enumerate()
    {
        waiting.push(send(path, prio));
        wait_metric_until(&gw, "ballast_queue_depth", &[("pool", "p")], |d| {
            d == (i + 1) as f64
        })
        .await;
    }
    assert_eq!(first.await.unwrap(), 200);
    for w in waiting {
        assert_eq!(w.await.unwrap(), 200);
    }
    let paths: Vec<String> = a.stats().log.iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/first", "/high", "/low1", "/low2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_pools_take_over_when_the_primary_cannot_serve() {
    let main = slow("main", 2000).await;
    let spare = sim("spare").await;
    let dead = dead_addr();
    let gw = Gateway::start(&format!(
        "{}[pool.queue]\nmax_wait = \"300ms\"\n{}{}{}{}",
        pool_toml("main", &[main.addr().to_string()], "max_conns = 1"),
        pool_toml("spare", &[spare.addr().to_string()], ""),
        pool_toml("down", std::slice::from_ref(&dead), ""),
        route_toml(
            "busy",
            "/busy",
            "main",
            "fallback = [{ pool = \"spare\", model = \"small-model\" }]"
        ),
        route_toml(
            "broken",
            "/broken",
            "down",
            "fallback = [{ pool = \"spare\" }]"
        ),
    ))
    .await;

    // Primary entirely down (connection refused): the fallback answers.
    let r = gw.client.get(gw.url("/broken/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-sim-server"], "spare");

    // Primary busy for longer than max_wait: the queued request moves on,
    // with its model rewritten for the fallback.
    let hog = tokio::spawn({
        let (c, u) = (gw.client.clone(), gw.url("/busy/first"));
        async move { c.get(u).send().await.unwrap().status() }
    });
    wait_metric_until(
        &gw,
        "ballast_upstream_outstanding",
        &[("pool", "main")],
        |v| v == 1.0,
    )
    .await;
    let body = r#"{"model":"deepseek-r1","messages":[{"role":"user","content":"hi"}]}"#;
    let r = gw
        .client
        .post(gw.url("/busy/echo"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-sim-server"], "spare");
    let mut want: serde_json::Value = serde_json::from_str(body).unwrap();
    want["model"] = "small-model".into();
    let want = serde_json::to_vec(&want).unwrap();
    let seen = spare.stats().log.last().cloned().unwrap();
    assert_eq!(seen.body_sha256, format!("{:x}", Sha256::digest(&want)));
    assert_eq!(seen.body_len as usize, want.len());
    assert_eq!(
        gw.metric(
            "ballast_shed_total",
            &[("pool", "main"), ("reason", "queue_timeout")]
        )
        .await,
        1.0
    );
    assert_eq!(hog.await.unwrap(), 200);
    assert_eq!(
        main.stats().requests,
        1,
        "the queued request never reached main"
    );
}

/// A pool of `steady` and `flaky`, two requests in flight each, with a
/// deep, patient queue; `flaky` is ejected by one failure for `fail_timeout`.
async fn steady_and_flaky(steady: &SimServer, flaky: &SimServer, fail_timeout: &str) -> Gateway {
    Gateway::start(&format!(
        "{}[pool.queue]\nmax_depth = 100\nmax_wait = \"20s\"\n{}",
        pool_toml(
            "p",
            &[steady.addr().to_string(), flaky.addr().to_string()],
            &format!("max_conns = 2\nmax_fails = 1\nfail_timeout = \"{fail_timeout}\"")
        ),
        route_toml("r", "/", "p", "")
    ))
    .await
}

/// `n` requests, one every 25 ms (`before(i)` runs before the i-th), each
/// allowed `timeout`; the answers, in order.
async fn paced(
    gw: &Gateway,
    n: usize,
    timeout: Duration,
    mut before: impl FnMut(usize),
) -> Vec<reqwest::Response> {
    let mut sent = Vec::new();
    for i in 0..n {
        before(i);
        let (c, u) = (gw.client.clone(), gw.url("/x"));
        sent.push(tokio::spawn(async move {
            c.get(&u).timeout(timeout).send().await
        }));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    join_all(sent)
        .await
        .into_iter()
        .map(|r| r.unwrap().expect("every request is answered"))
        .collect()
}

/// A server waiting for its probe request must not stall the queue.
/// Feeding the queue from free capacity used to take that server's probe
/// and free it again, forever and without yielding, so each request that
/// joined the queue then held a worker thread: with both threads spinning,
/// nothing was answered until the clients gave up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_waiting_for_its_probe_does_not_stall_the_queue() {
    let steady = slow("steady", 150).await;
    let flaky = sim("flaky").await;
    flaky.set_fault(status(503));
    let gw = steady_and_flaky(&steady, &flaky, "200ms").await;

    // Requests keep arriving while `steady` is full (so they queue) and
    // `flaky`, ejected by its first 503, comes up for a probe. Each may
    // wait far less than max_wait: a stalled queue would answer (shed with
    // 503) only after it.
    for r in paced(&gw, 30, Duration::from_secs(10), |_| {}).await {
        assert_eq!(r.status(), 200);
    }
    assert!(flaky.stats().requests >= 1, "flaky was never tried");
    assert!(steady.stats().peak_in_flight <= 2);
}

#[tokio::test]
async fn a_server_back_from_ejection_is_probed_while_requests_queue() {
    // `steady` is full all along, so every request queues; `flaky` is
    // ejected by a 503, then recovers. Its probe must come from the queue:
    // no request leases directly while others wait.
    let steady = slow("steady", 200).await;
    let flaky = sim("flaky").await;
    flaky.set_fault(status(503));
    let gw = steady_and_flaky(&steady, &flaky, "300ms").await;

    // 40 requests/s against the 10/s that steady alone can serve.
    let answers = paced(&gw, 60, Duration::from_secs(15), |i| {
        if i == 10 {
            // flaky has answered its 503 by now (it was free): it is ejected.
            flaky.set_fault(latency(Duration::from_millis(200)));
        }
    })
    .await;
    let ok = answers.iter().filter(|r| r.status() == 200).count();
    assert_eq!(ok, 60, "every request is served once flaky is back");
    let flaky_stats = flaky.stats();
    // Beyond its one 503: the probe, then a share of the traffic.
    assert!(
        flaky_stats.requests >= 10,
        "flaky came back for {} requests in all",
        flaky_stats.requests
    );
    assert!(steady.stats().peak_in_flight <= 2);
    assert!(flaky_stats.peak_in_flight <= 2);
}
