//! Graceful shutdown: on SIGTERM `/readyz` turns 503 at once, new
//! connections are refused after `drain_delay`, streams in flight run to
//! their end, and the process exits 0 as soon as nothing is left; streams
//! still open when `grace_period` runs out end with an error event.

use crate::harness::*;
use ballast::sim::{SimOptions, SimServer};
use futures_util::StreamExt;
use std::time::Duration;

const STREAM: &str =
    r#"{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"stream":true}"#;

async fn slow(tokens: u32) -> SimServer {
    sim_with(
        "a",
        SimOptions {
            tokens,
            token_interval: Duration::from_millis(50),
            ..SimOptions::default()
        },
    )
    .await
}

async fn gateway(sim: &SimServer, server: &str) -> Gateway {
    Gateway::start_server(
        server,
        &format!(
            "{}{}",
            pool_toml("p", &[sim.addr().to_string()], ""),
            route_toml("r", "/", "p", "openai = true")
        ),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_in_flight_finish_then_the_process_exits_0() {
    let a = slow(30).await;
    let mut gw = gateway(&a, "drain_delay = \"500ms\"\ngrace_period = \"20s\"").await;
    let streams: Vec<_> = (0..2)
        .map(|_| {
            let (client, url) = (gw.client.clone(), gw.url("/v1/chat/completions"));
            tokio::spawn(async move {
                let r = client.post(&url).body(STREAM).send().await.unwrap();
                r.text().await.unwrap()
            })
        })
        .collect();
    wait_until("streams never started", || a.stats().in_flight == 2).await;

    gw.signal(libc::SIGTERM);
    // The signal is handled asynchronously: /readyz turns 503 as soon as
    // it is (polled, not read once right after kill(2), which raced on a
    // loaded CI machine), long before the drain delay is over.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let ready = gw.client.get(gw.admin_url("/readyz")).send().await.unwrap();
        if ready.status() == 503 {
            break;
        }
        assert_eq!(ready.status(), 200);
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz never turned 503 after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // After the drain delay, a new connection gets nothing.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let fresh = reqwest::Client::new();
        if fresh.get(gw.url("/v1/models")).send().await.is_err() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "new connections still served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for s in streams {
        let text = s.await.unwrap();
        assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    }
    let status = gw
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the gateway exits");
    assert!(status.success(), "{status:?}\n{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_gateway_exits_without_waiting_for_its_grace_period() {
    let a = sim("a").await;
    let mut gw = gateway(&a, "drain_delay = \"0s\"\ngrace_period = \"60s\"").await;
    gw.signal(libc::SIGTERM);
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("an idle gateway exits long before its 60 s grace period");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_open_when_the_grace_period_ends_gets_an_error_event() {
    let a = slow(200).await;
    let mut gw = gateway(&a, "drain_delay = \"0s\"\ngrace_period = \"500ms\"").await;
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .body(STREAM)
        .send()
        .await
        .unwrap();
    let mut body = r.bytes_stream();
    let mut text = String::new();
    if let Some(Ok(first)) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&first));
    }
    gw.signal(libc::SIGTERM);
    let (rest, clean) = read_to_end(body).await;
    text.push_str(&rest);
    assert!(text.contains("gateway_shutting_down"), "{text}");
    assert!(!clean, "the cut stream must not end like a whole one");
    let status = gw
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the gateway exits");
    assert!(status.success(), "{status:?}");
}
