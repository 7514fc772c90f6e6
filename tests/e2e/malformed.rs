//! Malformed requests, as raw bytes: each gets its status in the gateway's
//! JSON shape and a closed connection (as nginx, HAProxy and Envoy answer),
//! never a bare close, never a repair, and nothing reaches a backend.

use crate::harness::*;

async fn refused(gw: &Gateway, wire: &[u8], status: u16, code: &str) {
    let reply = raw_exchange(gw.addr, wire).await;
    let shown = String::from_utf8_lossy(&wire[..wire.len().min(120)]).into_owned();
    assert_eq!(reply.status(), Some(status), "{shown:?} → {}", reply.text());
    let body: serde_json::Value = serde_json::from_str(&reply.body())
        .unwrap_or_else(|e| panic!("{shown:?}: not JSON ({e}): {}", reply.text()));
    assert_eq!(body["error"]["code"], code, "{shown:?}: {body}");
    assert!(reply
        .text()
        .to_ascii_lowercase()
        .contains("connection: close"));
    assert!(reply.closed, "{shown:?}: the connection stayed open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_heads_get_a_status_and_a_close() {
    let a = sim("a").await;
    let gw = Gateway::one_pool(&[a.addr().to_string()], "").await;
    let many_headers: String = (0..300).map(|i| format!("x-h{i}: v\r\n")).collect();
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "u".repeat(64 * 1024));
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello".to_vec(),
            400,
            "bad_request",
        ),
        (
            b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        (
            b"POST /x HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        (b"GET /x HTTP/1.1\r\nHost: a\r\nx-ctl: a\x01b\r\n\r\n".to_vec(), 400, "bad_request"),
        (b"GET /x HTTP/1.1\r\nHost: a\r\nBad Name: v\r\n\r\n".to_vec(), 400, "bad_request"),
        (format!("GET /x HTTP/1.1\r\nHost: a\r\n{many_headers}\r\n").into_bytes(), 431, "headers_too_large"),
        (long_uri.into_bytes(), 414, "uri_too_long"),
        (b"GET /x HTTP/1.1\r\n\r\n".to_vec(), 400, "bad_request"),
        (b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(), 400, "bad_request"),
        (b"GET /x HTTP/1.1\r\nHost: a/b\r\n\r\n".to_vec(), 400, "bad_request"),
        (b"GET /x HTTP/1.1\r\nHost: user@a\r\n\r\n".to_vec(), 400, "bad_request"),
        // Not repaired into "/a%20b", as Pingora would.
        (b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), 400, "bad_request"),
        (b"GET /x HTTP/1.1 extra\r\nHost: a\r\n\r\n".to_vec(), 400, "bad_request"),
        (b"TRACE /x HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), 405, "method_not_allowed"),
        (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n".to_vec(), 405, "method_not_allowed"),
    ];
    for (wire, status, code) in &cases {
        refused(&gw, wire, *status, code).await;
    }
    assert_eq!(
        a.stats().requests,
        0,
        "a malformed request reached the backend"
    );
    gw.wait_metric(
        "ballast_requests_total",
        &[("route", "none"), ("status", "400")],
        cases.iter().filter(|c| c.1 == 400).count() as f64,
    )
    .await;

    // The gateway still serves well-formed requests, HTTP/1.0 without Host
    // among them.
    let ok = raw_exchange(gw.addr, b"GET /v1/models HTTP/1.0\r\n\r\n").await;
    assert_eq!(ok.status(), Some(200), "{}", ok.text());
    assert_eq!(a.stats().requests, 1);
}
