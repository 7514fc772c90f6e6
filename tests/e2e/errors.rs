//! The gateway's own answers: JSON error shape, honest statuses, no hangs.

use crate::harness::*;
use std::time::Duration;

async fn error_code(r: reqwest::Response) -> String {
    let v: serde_json::Value = r.json().await.expect("JSON error body");
    assert_eq!(v["error"]["type"], "gateway_error", "{v}");
    v["error"]["code"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_server_down_gives_503_with_retry_after() {
    let dead = [dead_addr(), dead_addr()];
    let gw = Gateway::one_pool(&dead, "max_fails = 1\nfail_timeout = \"20s\"").await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();

    // First request tries both servers, each refuses: an honest 502.
    let r = client.get(gw.url("/x")).send().await.expect("no hang");
    assert_eq!(r.status(), 502);
    assert_eq!(error_code(r).await, "upstream_failed");

    // Both are now ejected: shed at once with a Retry-After near fail_timeout.
    let r = client.get(gw.url("/x")).send().await.expect("no hang");
    assert_eq!(r.status(), 503);
    let after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((15..=20).contains(&after), "retry-after {after}");
    assert_eq!(error_code(r).await, "upstream_unavailable");
    gw.wait_metric(
        "ballast_requests_total",
        &[("route", "r"), ("status", "503")],
        1.0,
    )
    .await;
    let ready = client.get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_path_is_404_json() {
    let a = sim("a").await;
    let gw = Gateway::start(&format!(
        "{}{}",
        pool_toml("p", &[a.addr().to_string()], ""),
        route_toml("r", "/v1/", "p", "")
    ))
    .await;
    let r = gw.client.get(gw.url("/admin/secret")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "route_not_found");
    assert_eq!(a.stats().requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_is_413_and_never_reaches_a_backend() {
    let a = sim("a").await;
    let gw = Gateway::start(&format!(
        "[limits]\nmax_request_body = \"1KiB\"\n{}{}",
        pool_toml("p", &[a.addr().to_string()], ""),
        route_toml("r", "/", "p", "")
    ))
    .await;
    let ok = gw
        .client
        .post(gw.url("/x"))
        .body(vec![b'a'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let big = gw
        .client
        .post(gw.url("/x"))
        .body(vec![b'a'; 1025])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    assert_eq!(error_code(big).await, "body_too_large");
    // Same limit when the length is not announced (chunked upload).
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(vec![b'a'; 700]), Ok(vec![b'a'; 700])];
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let big = gw
        .client
        .post(gw.url("/x"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    assert_eq!(
        a.stats().requests,
        1,
        "only the request within the limit arrived"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_slower_than_first_byte_timeout_is_504() {
    let slow = sim("slow").await;
    slow.set_fault(latency(Duration::from_secs(5)));
    let gw = Gateway::start(&format!(
        "{}{}",
        pool_toml("p", &[slow.addr().to_string()], ""),
        route_toml("r", "/", "p", "[route.timeouts]\nfirst_byte = \"300ms\"")
    ))
    .await;
    let r = gw.client.get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(error_code(r).await, "upstream_timeout");
    // The abandoned attempt's connection was closed, so the backend saw it go.
    wait_until("backend never saw the close", || {
        slow.stats().disconnects_mid_response > 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_or_oversized_request_heads_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = sim("a").await;
    let gw = Gateway::start(&format!(
        "[limits]\nheader_timeout = \"300ms\"\nmax_header_bytes = \"2KiB\"\n{}{}",
        pool_toml("p", &[a.addr().to_string()], ""),
        route_toml("r", "/", "p", "")
    ))
    .await;

    // A head that never completes: the gateway hangs up (slowloris).
    let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    conn.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "connection held open past header_timeout");

    // Headers over the limit: 431 in the JSON shape.
    let r = gw
        .client
        .get(gw.url("/x"))
        .header("x-big", "v".repeat(3000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    assert_eq!(error_code(r).await, "headers_too_large");
    assert_eq!(a.stats().requests, 0);
}
