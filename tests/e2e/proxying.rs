//! What the backend sees of a proxied request, and what the client sees back.

use crate::harness::*;
use futures_util::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_and_hop_by_hop() {
    let a = sim("a").await;
    let gw = Gateway::start(&format!(
        "{}{}{}",
        pool_toml("p", &[a.addr().to_string()], "host = \"models.internal\""),
        route_toml("r", "/", "p", ""),
        ""
    ))
    .await;
    let r = gw
        .client
        .post(gw.url("/echo?q=1"))
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-custom", "kept")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-sim-server").is_some());
    let echo: serde_json::Value = r.json().await.unwrap();
    let h = &echo["headers"];
    assert_eq!(echo["path"], "/echo?q=1");
    assert_eq!(echo["body_len"], 5);
    assert_eq!(h["host"], "models.internal");
    // The client is no trusted proxy: its own X-Forwarded-For is replaced.
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-custom"], "kept");
    assert!(
        h.get("x-hop").is_none(),
        "Connection-listed header forwarded: {h}"
    );
    assert!(h.get("keep-alive").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_keeps_connections_alive() {
    let a = sim("a").await;
    let gw = Gateway::one_pool(&[a.addr().to_string()], "").await;
    for _ in 0..3 {
        let r = gw
            .client
            .post(gw.url("/v1/chat/completions"))
            .body(r#"{"model":"m","messages":[],"stream":true,"max_tokens":5}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        let mut body = Vec::new();
        let mut s = r.bytes_stream();
        while let Some(chunk) = s.next().await {
            body.extend_from_slice(&chunk.unwrap());
        }
        let text = String::from_utf8(body).unwrap();
        assert_eq!(text.matches("data: {").count(), 5);
        assert!(text.trim_end().ends_with("data: [DONE]"));
    }
    // Three requests, one pooled backend connection.
    assert_eq!(a.stats().connections_accepted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_clients_are_served() {
    let a = sim("a").await;
    let gw = Gateway::one_pool(&[a.addr().to_string()], "").await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2
        .post(gw.url("/v1/chat/completions"))
        .body(r#"{"model":"m","messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    let echo: serde_json::Value = h2
        .get(gw.url("/e"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["headers"]["host"], gw.addr.to_string());
}

/// Read from `conn` until `needle` shows up (bounded by a generous timeout).
async fn read_until(conn: &mut tokio::net::TcpStream, needle: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let work = async {
        while !String::from_utf8_lossy(&seen).contains(needle) {
            let n = conn.read(&mut buf).await.expect("read");
            assert!(
                n > 0,
                "closed before {needle:?}: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), work)
        .await
        .expect("no hang");
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_is_answered_by_the_gateway() {
    use tokio::io::AsyncWriteExt;
    let a = sim("a").await;
    let gw = Gateway::start(&format!(
        "[limits]\nmax_request_body = \"1KiB\"\n{}{}",
        pool_toml("p", &[a.addr().to_string()], ""),
        route_toml("r", "/", "p", "")
    ))
    .await;

    let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    conn.write_all(
        b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_until(&mut conn, "\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 100"), "{head}");
    conn.write_all(b"hello").await.unwrap();
    let resp = read_until(&mut conn, "body_sha256").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let log = a.stats().log;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].body_len, 5);
    assert!(
        !log[0].headers.iter().any(|(k, _)| k == "expect"),
        "Expect forwarded: {:?}",
        log[0].headers
    );

    // Too large: refused up front, no invitation to send the body.
    let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    conn.write_all(
        b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let resp = read_until(&mut conn, "\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_json_access_log_line_per_request() {
    let dead = dead_addr();
    let a = sim("a").await;
    let gw = Gateway::start(&format!(
        "[log]\nformat = \"json\"\nlevel = \"info\"\n{}{}",
        pool_toml("p", &[dead.clone(), a.addr().to_string()], "max_fails = 0"),
        route_toml("chat", "/", "p", "[route.retry]\nbudget = 1.0")
    ))
    .await;
    for i in 0..20 {
        let r = gw
            .client
            .get(gw.url(&format!("/x{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let access_lines = || -> Vec<serde_json::Value> {
        gw.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "ballast::access")
            .collect()
    };
    wait_until("20 access-log lines", || access_lines().len() == 20).await;
    let lines = access_lines();
    for line in &lines {
        assert_eq!(line["route"], "chat", "{line}");
        assert_eq!(line["pool"], "p");
        assert_eq!(line["status"], 200);
        assert!(line["duration_ms"].as_f64().is_some());
        let attempts = line["attempts"].as_u64().unwrap();
        let servers = line["servers"].as_str().unwrap();
        assert_eq!(servers.split(',').count() as u64, attempts, "{line}");
        assert!(servers.ends_with(&a.addr().to_string()), "{line}");
    }
    assert!(
        lines.iter().any(|l| l["attempts"] == 2),
        "no request tried the dead server first: {lines:?}"
    );
}
