//! Weighted least-outstanding selection, seen from the backends.

use crate::harness::*;
use futures_util::future::join_all;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Send `total` GETs with `concurrency` workers; every one must succeed.
async fn load(gw: &Gateway, total: usize, concurrency: usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let workers = (0..concurrency).map(|_| {
        let next = next.clone();
        let client = gw.client.clone();
        let url = gw.url("/api/work");
        async move {
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let r = client.get(&url).send().await.expect("request");
                assert_eq!(r.status(), 200);
                r.bytes().await.expect("body");
            }
        }
    });
    join_all(workers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_backend_gets_markedly_fewer_requests() {
    let fast1 = sim("fast1").await;
    let fast2 = sim("fast2").await;
    let slow = sim("slow").await;
    slow.set_fault(latency(Duration::from_millis(150)));
    let servers = [fast1.addr(), fast2.addr(), slow.addr()].map(|a| a.to_string());
    let gw = Gateway::one_pool(&servers, "").await;

    load(&gw, 300, 6).await;

    let (f1, f2, s) = (
        fast1.stats().requests,
        fast2.stats().requests,
        slow.stats().requests,
    );
    assert_eq!(
        f1 + f2 + s,
        300,
        "every request reached exactly one backend"
    );
    // Round-robin would give the slow server 100; least-outstanding sends
    // it work only while it has less in flight than the fast ones.
    assert!(s < 45, "slow backend got {s} of 300 (fast: {f1}, {f2})");
    assert!(
        slow.stats().peak_in_flight <= 3,
        "slow backend was piled on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_backends_share_evenly() {
    let sims = [sim("a").await, sim("b").await, sim("c").await];
    for s in &sims {
        s.set_fault(latency(Duration::from_millis(3)));
    }
    let servers: Vec<String> = sims.iter().map(|s| s.addr().to_string()).collect();
    let gw = Gateway::one_pool(&servers, "").await;

    load(&gw, 300, 6).await;

    let counts: Vec<u64> = sims.iter().map(|s| s.stats().requests).collect();
    assert_eq!(counts.iter().sum::<u64>(), 300);
    for c in &counts {
        assert!((65..=135).contains(c), "uneven split {counts:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_are_respected() {
    let heavy = sim("heavy").await;
    let light = sim("light").await;
    for s in [&heavy, &light] {
        s.set_fault(latency(Duration::from_millis(3)));
    }
    let body = format!(
        "[[pool]]\nname = \"p\"\n\
         [[pool.servers]]\naddr = \"{}\"\nweight = 3\n\
         [[pool.servers]]\naddr = \"{}\"\nweight = 1\n{}",
        heavy.addr(),
        light.addr(),
        route_toml("r", "/", "p", "")
    );
    let gw = Gateway::start(&body).await;

    // Sequential traffic: every pick is a tie, broken in proportion to weight.
    load(&gw, 200, 1).await;
    // Concurrent traffic: outstanding/weight keeps the heavy server busier.
    load(&gw, 200, 4).await;

    let (h, l) = (heavy.stats().requests, light.stats().requests);
    assert_eq!(h + l, 400);
    let ratio = h as f64 / l as f64;
    assert!((2.0..=4.5).contains(&ratio), "weight 3:1 gave {h}:{l}");
}
