//! Streaming: tokens pass through as they are produced, a stream that never
//! starts fails over invisibly, and one that breaks after starting is never
//! passed off as complete.

use crate::harness::*;
use ballast::sim::{Fault, FaultKind, SimOptions, SimServer};
use futures_util::StreamExt;
use std::time::{Duration, Instant};

const STREAM_REQ: &str =
    r#"{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"stream":true}"#;

async fn slow_sim(name: &str, tokens: u32, interval_ms: u64) -> SimServer {
    sim_with(
        name,
        SimOptions {
            tokens,
            token_interval: Duration::from_millis(interval_ms),
            ..SimOptions::default()
        },
    )
    .await
}

/// A streaming chat completion through the gateway.
async fn post_stream(gw: &Gateway) -> reqwest::Response {
    gw.client
        .post(gw.url("/v1/chat/completions"))
        .body(STREAM_REQ)
        .send()
        .await
        .expect("request sent")
}

/// Read a streamed response to its end: the chunks as they arrived and
/// whether the body ended cleanly (false: the stream was aborted).
async fn read_stream(r: reqwest::Response) -> (Vec<(Instant, String)>, bool) {
    let mut chunks = Vec::new();
    let mut s = r.bytes_stream();
    while let Some(item) = s.next().await {
        match item {
            Ok(b) => chunks.push((Instant::now(), String::from_utf8_lossy(&b).into_owned())),
            Err(_) => return (chunks, false),
        }
    }
    (chunks, true)
}

fn joined(chunks: &[(Instant, String)]) -> String {
    chunks.iter().map(|(_, c)| c.as_str()).collect()
}

fn token_events(text: &str) -> usize {
    text.matches("chat.completion.chunk").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_reach_the_client_as_they_are_produced() {
    let a = slow_sim("a", 20, 100).await;
    let gw = Gateway::one_pool(&[a.addr().to_string()], "").await;
    let r = post_stream(&gw).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-accel-buffering"], "no");
    assert_eq!(
        r.headers()["cache-control"],
        "no-cache",
        "backend's Cache-Control kept"
    );
    let (chunks, clean) = read_stream(r).await;
    assert!(clean);
    let text = joined(&chunks);
    assert_eq!(token_events(&text), 20);
    assert!(text.trim_end().ends_with("data: [DONE]"));
    // In order, and one read per token rather than one big buffered read.
    let order: Vec<usize> = (0..20)
        .map(|i| text.find(&format!("tok{i} ")).unwrap())
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "tokens out of order");
    let token_reads = chunks
        .iter()
        .filter(|(_, c)| c.contains("chat.completion.chunk"))
        .count();
    assert!(
        token_reads >= 15,
        "tokens were batched: {token_reads} reads for 20 tokens"
    );
    // The first token was in the client's hands long before the last was produced.
    let first = chunks[0].0;
    let last = chunks.last().unwrap().0;
    assert!(
        last - first >= Duration::from_millis(1000),
        "{:?}",
        last - first
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_never_starts_fails_over_invisibly() {
    for (what, fault) in [
        (
            "headers but no token",
            FaultKind::StallMidStream { after_tokens: 0 },
        ),
        ("nothing at all", FaultKind::Hang),
    ] {
        let a = slow_sim("a", 5, 10).await;
        let b = slow_sim("b", 5, 10).await;
        a.set_fault(Fault::new(fault));
        let gw = Gateway::start(&format!(
            "{}{}",
            pool_toml(
                "p",
                &[a.addr().to_string(), b.addr().to_string()],
                "max_fails = 0"
            ),
            route_toml(
                "r",
                "/",
                "p",
                "[route.retry]\non = [\"timeout\", \"connect_error\"]\n\
                 [route.timeouts]\nfirst_byte = \"300ms\""
            )
        ))
        .await;
        // Until A has been picked at least once; every client sees a whole stream.
        for _ in 0..40 {
            let r = post_stream(&gw).await;
            assert_eq!(r.status(), 200, "{what}");
            let (chunks, clean) = read_stream(r).await;
            let text = joined(&chunks);
            assert!(
                clean && text.trim_end().ends_with("data: [DONE]"),
                "{what}: {text}"
            );
            assert!(
                text.contains("\"system_fingerprint\":\"b\""),
                "{what}: served by A? {text}"
            );
            if a.stats().requests > 0 {
                break;
            }
        }
        assert!(a.stats().requests > 0, "{what}: A never tried");
        // A's abandoned attempts were closed, not left hanging.
        wait_until(&format!("{what}: A's connections closed"), || {
            a.stats().disconnects_mid_response >= a.stats().requests
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_stream_ends_with_an_error_event_and_an_aborted_body() {
    let a = slow_sim("a", 60, 5).await;
    a.set_fault(Fault::new(FaultKind::CloseMidStream { after_tokens: 40 }));
    let gw = Gateway::one_pool(&[a.addr().to_string()], "max_fails = 0").await;
    let r = post_stream(&gw).await;
    assert_eq!(r.status(), 200);
    let (chunks, clean) = read_stream(r).await;
    let text = joined(&chunks);
    assert!(!clean, "a truncated stream ended cleanly");
    assert_eq!(token_events(&text), 40);
    assert!(!text.contains("[DONE]"));
    let last_event = text.trim_end().rsplit("\n\n").next().unwrap();
    assert!(
        last_event.starts_with("data: {\"error\"")
            && last_event.contains("upstream_stream_interrupted"),
        "last event: {last_event}"
    );
    gw.wait_metric(
        "ballast_stream_aborts_total",
        &[("reason", "upstream_broken")],
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_is_ended_after_stream_idle() {
    let a = slow_sim("a", 20, 5).await;
    a.set_fault(Fault::new(FaultKind::StallMidStream { after_tokens: 5 }));
    let gw = Gateway::start(&format!(
        "{}{}",
        pool_toml("p", &[a.addr().to_string()], "max_fails = 0"),
        route_toml("r", "/", "p", "[route.timeouts]\nstream_idle = \"400ms\"")
    ))
    .await;
    let r = post_stream(&gw).await;
    let (chunks, clean) = read_stream(r).await;
    let text = joined(&chunks);
    assert!(!clean);
    assert_eq!(token_events(&text), 5);
    assert!(text.contains("upstream_stream_interrupted"), "{text}");
    // The gateway closed the stalled backend connection.
    wait_until("stalled backend connection left open", || {
        a.stats().disconnects_mid_response > 0
    })
    .await;
    gw.wait_metric(
        "ballast_stream_aborts_total",
        &[("reason", "upstream_stalled")],
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_cancels_the_backend_at_once() {
    // The backend goes quiet after two tokens: only the gateway noticing the
    // client's close (not a failed write) can end this within stream_idle.
    let a = slow_sim("a", 50, 5).await;
    a.set_fault(Fault::new(FaultKind::StallMidStream { after_tokens: 2 }));
    let server = a.addr().to_string();
    let gw = Gateway::one_pool(std::slice::from_ref(&server), "max_fails = 0").await;
    let r = post_stream(&gw).await;
    let mut s = r.bytes_stream();
    assert!(s.next().await.is_some());
    assert_eq!(
        gw.metric("ballast_streams_active", &[("kind", "sse")])
            .await,
        1.0
    );
    drop(s);

    wait_until("backend never saw the client leave", || {
        a.stats().disconnects_mid_response > 0
    })
    .await;
    gw.wait_server(&server, "idle", |s| s["outstanding"] == 0)
        .await;
    gw.wait_metric("ballast_streams_active", &[("kind", "sse")], 0.0)
        .await;

    // Same while still waiting for the first byte.
    a.reset_stats();
    a.set_fault(Fault::new(FaultKind::Hang));
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    assert!(quick
        .post(gw.url("/v1/chat/completions"))
        .body(STREAM_REQ)
        .send()
        .await
        .is_err());
    wait_until("backend kept a request nobody waits for", || {
        a.stats().disconnects_mid_response > 0
    })
    .await;
    gw.wait_server(&server, "idle", |s| s["outstanding"] == 0)
        .await;
}
