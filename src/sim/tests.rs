//! End-to-end tests of the simulated backend over raw TCP.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::test_client::Client;
use super::*;

const HELLO_SHA256: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

async fn start(name: &str, f: impl FnOnce(&mut SimOptions)) -> SimServer {
    let mut opts = SimOptions {
        name: name.to_string(),
        token_interval: Duration::from_millis(1),
        ..SimOptions::default()
    };
    f(&mut opts);
    SimServer::start("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .unwrap()
}

/// Polls `cond` until it holds (bounded).
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn keep_alive_serves_many_requests_and_chunked_bodies() {
    let s = start("ka", |_| {}).await;
    let mut c = Client::connect(&s).await;
    let r1 = c.get("/a").await;
    assert_eq!(r1.status, 200);
    assert_eq!(r1.header("x-sim-server"), Some("ka"));
    let raw = "POST /b HTTP/1.1\r\nhost: sim\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhe\r\n3;x=y\r\nllo\r\n0\r\n\r\n";
    c.stream.write_all(raw.as_bytes()).await.unwrap();
    let r2 = c.response().await.unwrap().json();
    assert_eq!(r2["path"], "/b");
    assert_eq!(r2["body_len"], 5);
    assert_eq!(r2["body_sha256"], HELLO_SHA256);
    let st = s.stats();
    assert_eq!(
        (st.connections_accepted, st.requests, st.in_flight),
        (1, 2, 0)
    );

    c.send("GET", "/c", "connection: close\r\n", "").await;
    let r3 = c.response().await.unwrap();
    assert_eq!(r3.header("connection"), Some("close"));
    assert!(c.closed().await);

    let mut old = Client::connect(&s).await;
    old.stream
        .write_all(b"GET /d HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(old.response().await.unwrap().status, 200);
    assert!(old.closed().await);
}

#[tokio::test]
async fn echo_shows_headers_body_hash_and_log() {
    let s = start("echo", |_| {}).await;
    let mut c = Client::connect(&s).await;
    c.send("PUT", "/x/y?q=1", "X-Forwarded-For: 10.0.0.1\r\n", "hello")
        .await;
    let r = c.response().await.unwrap();
    let v = r.json();
    assert_eq!(v["server"], "echo");
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["path"], "/x/y?q=1");
    assert_eq!(v["headers"]["x-forwarded-for"], "10.0.0.1");
    assert_eq!(v["headers"]["host"], "sim");
    assert_eq!(v["body_sha256"], HELLO_SHA256);
    let log = s.stats().log;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].path, "/x/y?q=1");
    assert_eq!(log[0].body_len, 5);
    assert!(log[0]
        .headers
        .contains(&("x-forwarded-for".into(), "10.0.0.1".into())));
}

#[tokio::test]
async fn completions_json_and_sse_stream() {
    let s = start("gen", |o| o.tokens = 5).await;
    let mut c = Client::connect(&s).await;
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi there"}],"max_tokens":3}"#;
    let r = c.post("/v1/chat/completions", body).await;
    assert_eq!(r.header("x-sim-server"), Some("gen"));
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "sim-model");
    assert_eq!(v["system_fingerprint"], "gen");
    assert_eq!(v["choices"][0]["message"]["content"], "tok0 tok1 tok2 ");
    assert_eq!(v["usage"]["completion_tokens"], 3);
    assert_eq!(v["usage"]["prompt_tokens"], 2);

    c.post("/v1/chat/completions", r#"{"stream":true}"#).await;
    let r = c.post("/v1/chat/completions", r#"{"stream":true}"#).await;
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let text = String::from_utf8(r.body).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 6, "{text}");
    for (i, line) in lines[..5].iter().enumerate() {
        let v: Value = serde_json::from_str(line.strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        assert_eq!(v["choices"][0]["delta"]["content"], format!("tok{i} "));
    }
    assert_eq!(lines[5], "data: [DONE]");

    let r = c
        .post("/v1/completions", r#"{"prompt":"a","max_tokens":2}"#)
        .await;
    assert_eq!(r.json()["choices"][0]["text"], "tok0 tok1 ");
    let r = c.get("/v1/models").await.json();
    assert_eq!(r["data"][0]["id"], "sim-model");
    let r = c.post("/v1/chat/completions", "{not json").await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"].is_string());
    assert_eq!(s.stats().requests, 6);
}

#[tokio::test]
async fn status_fault_applies_times_then_reverts() {
    let kind = FaultKind::Status {
        code: 429,
        retry_after: Some("2".into()),
    };
    let s = start("st", |o| o.fault = Fault::new(kind).times(1)).await;
    let mut c = Client::connect(&s).await;
    let r = c.get("/x").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("2"));
    assert_eq!(r.header("x-sim-server"), Some("st"));
    assert!(r.json()["error"]["message"].is_string());
    assert_eq!(c.get("/x").await.status, 200);
    assert_eq!(s.fault(), Fault::default());
}

#[tokio::test]
async fn control_plane_changes_fault_and_health() {
    let s = start("ctl", |_| {}).await;
    let mut c = Client::connect(&s).await;
    let r = c
        .post("/_sim/fault", r#"{"kind":"status","code":503}"#)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(c.get("/x").await.status, 503);
    assert_eq!(c.get("/_sim/stats").await.status, 200);
    assert_eq!(
        c.post("/_sim/fault", r#"{"latency":"1ms"}"#).await.status,
        200
    );
    assert_eq!(c.get("/x").await.status, 200);
    assert_eq!(c.post("/_sim/fault", r#"{"kind":"zap"}"#).await.status, 400);
    assert_eq!(
        c.post("/_sim/fault", r#"{"kind":"status","code":42}"#)
            .await
            .status,
        400
    );

    assert_eq!(c.get("/health").await.json()["status"], "ok");
    assert_eq!(
        c.post("/_sim/health", r#"{"mode":"fail"}"#).await.status,
        200
    );
    assert_eq!(c.get("/health").await.status, 503);
    s.set_health(HealthMode::Ok);
    assert_eq!(c.get("/health").await.status, 200);

    let st: Stats = serde_json::from_slice(&c.get("/_sim/stats").await.body).unwrap();
    assert_eq!((st.requests, st.health_checks), (2, 3));
    assert_eq!(c.post("/_sim/reset", "").await.status, 200);
    assert_eq!(s.stats(), Stats::default());
}

#[tokio::test]
async fn reset_fault_resets_the_connection() {
    let s = start("rst", |o| o.fault = Fault::new(FaultKind::Reset)).await;
    let mut c = Client::connect(&s).await;
    c.send("GET", "/x", "", "").await;
    let mut tmp = [0u8; 64];
    let r = timeout(Duration::from_secs(5), c.stream.read(&mut tmp))
        .await
        .unwrap();
    let err = r.expect_err("expected a connection reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    assert_eq!(s.stats().requests, 1);
}

#[tokio::test]
async fn close_mid_stream_cuts_after_n_tokens() {
    let kind = FaultKind::CloseMidStream { after_tokens: 3 };
    let s = start("cut", |o| o.fault = Fault::new(kind)).await;
    let mut c = Client::connect(&s).await;
    c.send("POST", "/v1/chat/completions", "", r#"{"stream":true}"#)
        .await;
    assert_eq!(c.head().await.unwrap().status, 200);
    for i in 0..3 {
        let data = c.chunk().await.unwrap().unwrap();
        assert!(String::from_utf8(data)
            .unwrap()
            .contains(&format!("tok{i} ")));
    }
    let rest = c.chunk().await;
    assert!(rest.is_err(), "expected EOF, got {rest:?}");
    eventually("in_flight 0", || s.stats().in_flight == 0).await;
}

#[tokio::test]
async fn stall_and_hang_hold_until_client_leaves() {
    let kind = FaultKind::StallMidStream { after_tokens: 2 };
    let s = start("stall", |o| o.fault = Fault::new(kind)).await;
    let mut c = Client::connect(&s).await;
    c.send("POST", "/v1/completions", "", r#"{"stream":true}"#)
        .await;
    c.head().await.unwrap();
    c.chunk().await.unwrap().unwrap();
    c.chunk().await.unwrap().unwrap();
    assert!(timeout(Duration::from_millis(200), c.chunk())
        .await
        .is_err());
    assert_eq!(s.stats().in_flight, 1);
    drop(c);
    eventually("stall released", || s.stats().in_flight == 0).await;

    s.set_fault(Fault::new(FaultKind::Hang));
    let mut c = Client::connect(&s).await;
    c.send("GET", "/x", "", "").await;
    assert!(timeout(Duration::from_millis(200), c.head()).await.is_err());
    drop(c);
    eventually("hang released", || s.stats().in_flight == 0).await;
    assert_eq!(s.stats().disconnects_mid_response, 2);
}

#[tokio::test]
async fn client_disconnect_mid_stream_is_noticed() {
    let s = start("bye", |o| o.tokens = 100_000).await;
    let mut c = Client::connect(&s).await;
    c.send("POST", "/v1/chat/completions", "", r#"{"stream":true}"#)
        .await;
    c.head().await.unwrap();
    c.chunk().await.unwrap().unwrap();
    drop(c);
    eventually("stream stopped", || s.stats().in_flight == 0).await;
    assert_eq!(s.stats().disconnects_mid_response, 1);
}

#[tokio::test]
async fn peak_in_flight_counts_concurrent_slow_requests() {
    let s = start("peak", |o| {
        o.fault = Fault::latency(Duration::from_millis(300))
    })
    .await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut c = Client::connect(&s).await;
        tasks.push(tokio::spawn(async move { c.get("/slow").await.status }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let st = s.stats();
    assert_eq!((st.peak_in_flight, st.in_flight, st.requests), (4, 0, 4));
}

#[tokio::test]
async fn health_hang_and_bad_requests() {
    let s = start("hh", |o| o.health = HealthMode::Hang).await;
    let mut c = Client::connect(&s).await;
    c.send("GET", "/health", "", "").await;
    assert!(timeout(Duration::from_millis(100), c.head()).await.is_err());

    let mut c = Client::connect(&s).await;
    c.stream
        .write_all(b"GET / HTTP/1.1\r\nbad header\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(c.response().await.unwrap().status, 400);
    assert!(c.closed().await);

    let mut c = Client::connect(&s).await;
    c.stream
        .write_all(b"POST / HTTP/1.1\r\ncontent-length: zz\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(c.response().await.unwrap().status, 400);
    assert_eq!(s.stats().requests, 0);
}

#[tokio::test]
async fn shutdown_closes_open_connections() {
    let s = start("dead", |o| o.tokens = 100_000).await;
    let mut idle = Client::connect(&s).await;
    assert_eq!(idle.get("/x").await.status, 200);
    let mut streaming = Client::connect(&s).await;
    streaming
        .send("POST", "/v1/completions", "", r#"{"stream":true}"#)
        .await;
    streaming.head().await.unwrap();
    s.shutdown();
    assert!(idle.closed().await);
    let mut rest = Ok(Some(Vec::new()));
    while let Ok(Some(_)) = rest {
        rest = timeout(Duration::from_secs(5), streaming.chunk())
            .await
            .unwrap();
    }
    assert!(rest.is_err());
    let addr = s.addr();
    let mut refused = false;
    for _ in 0..500 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused);
}

#[tokio::test]
async fn max_concurrency_answers_busy_beyond_the_limit() {
    let s = start("cap", |o| o.max_concurrency = 2).await;
    s.set_fault(Fault::latency(Duration::from_millis(300)));
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = Client::connect(&s).await;
        c.send("POST", "/v1/chat/completions", "", body).await;
        held.push(c);
    }
    eventually("two requests in flight", || s.stats().in_flight == 2).await;
    let mut third = Client::connect(&s).await;
    let r = third.post("/v1/chat/completions", body).await;
    assert_eq!(r.status, 503);
    assert!(String::from_utf8_lossy(&r.body).contains("server busy"));
    for mut c in held {
        assert_eq!(c.response().await.unwrap().status, 200);
    }
    // Capacity is back once they are done.
    assert_eq!(third.post("/v1/chat/completions", body).await.status, 200);
}
