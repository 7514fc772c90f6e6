//! Memory per connection is bounded: slow bodies end with 408 long before
//! the route's deadline, the bytes buffered across all connections have a
//! ceiling, an endless head costs no more than the head limit, and memory
//! comes back afterwards.

use crate::harness::*;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_ends_with_408_at_body_timeout() {
    let a = sim("a").await;
    let gw = Gateway::start(&format!(
        "[limits]\nbody_timeout = \"500ms\"\n{}{}",
        pool_toml("p", &[a.addr().to_string()], ""),
        route_toml("r", "/", "p", "[route.timeouts]\ntotal = \"10m\"")
    ))
    .await;
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    let t0 = Instant::now();
    c.write_all(b"POST /echo HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000\r\n\r\nonly some")
        .await
        .unwrap();
    let reply = read_until_closed(&mut c, Duration::from_secs(10))
        .await
        .text();
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("request_timeout"), "{reply}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(a.stats().requests, 0);
    gw.wait_metric("ballast_buffered_request_bytes", &[], 0.0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_bytes_across_connections_have_a_ceiling() {
    let a = sim("a").await;
    let gw = Gateway::start(&format!(
        "[limits]\nmax_buffered_bytes = \"1MiB\"\nbody_timeout = \"3s\"\n{}{}",
        pool_toml("p", &[a.addr().to_string()], ""),
        route_toml("r", "/", "p", "")
    ))
    .await;
    // One client holds 900 KiB of a 1000 KiB body and stalls.
    let mut hog = TcpStream::connect(gw.addr).await.unwrap();
    hog.write_all(b"POST /echo HTTP/1.1\r\nHost: gw\r\nContent-Length: 1024000\r\n\r\n")
        .await
        .unwrap();
    hog.write_all(&vec![b'x'; 900 * 1024]).await.unwrap();
    wait_metric_at_least(&gw, "ballast_buffered_request_bytes", 900.0 * 1024.0).await;

    // Another body would pass the ceiling: 503 at once, with Retry-After.
    let r = gw
        .client
        .post(gw.url("/echo"))
        .body(vec![b'y'; 200 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "gateway_overloaded");
    // A small one still fits.
    let r = gw
        .client
        .post(gw.url("/echo"))
        .body(vec![b'z'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The stalled client times out; its bytes are given back.
    let reply = read_until_closed(&mut hog, Duration::from_secs(10))
        .await
        .text();
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    gw.wait_metric("ballast_buffered_request_bytes", &[], 0.0)
        .await;
    assert_eq!(a.stats().requests, 1);
}

async fn wait_metric_at_least(gw: &Gateway, name: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = gw.metric(name, &[]).await;
        if got >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stayed {got}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_heads_and_big_bodies_leave_memory_where_it_was() {
    let a = sim("a").await;
    let gw = Gateway::one_pool(&[a.addr().to_string()], "").await;
    // Warm up the allocator and the connection pool once.
    let r = gw
        .client
        .post(gw.url("/echo"))
        .body(vec![b'w'; 1 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let baseline = rss_kib(gw.pid());

    // 200 heads of 900 KiB that never end: each is cut at the head limit.
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let addr = gw.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            let mut head = b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nx-pad: ".to_vec();
            head.resize(900 * 1024, b'a');
            let _ = c.write_all(&head).await;
            read_until_closed(&mut c, Duration::from_secs(10))
                .await
                .text()
        }));
    }
    let mut peak = 0;
    for t in tasks {
        let reply = t.await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
        peak = peak.max(rss_kib(gw.pid()));
    }
    assert!(
        peak < baseline + 32 * 1024,
        "200 endless heads took {} KiB",
        peak - baseline
    );

    // Twenty 8 MiB bodies at once: held while served, given back after.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (client, url) = (gw.client.clone(), gw.url("/echo"));
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .body(vec![b'b'; 8 << 20])
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    gw.wait_metric("ballast_buffered_request_bytes", &[], 0.0)
        .await;
    // The allocator hands freed pages back to the system lazily, on a
    // thread's next activity: keep a trickle of small requests going.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        gw.client.get(gw.url("/v1/models")).send().await.unwrap();
        let rss = rss_kib(gw.pid());
        if rss < baseline + 48 * 1024 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "memory stayed {} KiB above its baseline",
            rss - baseline
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
