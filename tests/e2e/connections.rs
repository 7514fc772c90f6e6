//! Every connection state has a deadline and the number of connections a
//! cap: silent, half-sent and idle connections are closed on time, HTTP/2
//! ones too, and descriptors come back.

use crate::harness::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Read until the gateway closes the connection; what it sent, or a
/// failure if it is still open after `limit`.
async fn until_closed(conn: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let reply = read_until_closed(conn, limit).await;
    assert!(
        reply.closed,
        "still open after {limit:?}; got {:?}",
        reply.text()
    );
    reply.bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_send_too_little_are_closed_on_time() {
    let a = sim("a").await;
    let gw = Gateway::start(&format!(
        "[limits]\nheader_timeout = \"400ms\"\n{}{}",
        pool_toml("p", &[a.addr().to_string()], ""),
        route_toml("r", "/", "p", "")
    ))
    .await;
    let baseline = open_fds(gw.pid());
    // Nothing, a part of the HTTP/2 preface, a part of a head; 60 of each.
    let starts: [&[u8]; 3] = [b"", b"PRI * HTTP/2", b"GET /v1/models HTTP/1.1\r\nHo"];
    let mut conns = Vec::new();
    for start in starts {
        for _ in 0..60 {
            let mut c = TcpStream::connect(gw.addr).await.unwrap();
            c.write_all(start).await.unwrap();
            conns.push((start, c));
        }
    }
    let t0 = Instant::now();
    for (start, c) in &mut conns {
        let got = until_closed(c, Duration::from_secs(10)).await;
        let text = String::from_utf8_lossy(&got);
        if start.starts_with(b"GET") {
            // A head begun and not finished: 408, then close.
            assert!(text.starts_with("HTTP/1.1 408"), "{text}");
            assert!(text.contains("request_timeout"), "{text}");
        } else {
            assert!(got.is_empty(), "{text}");
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(a.stats().requests, 0);
    drop(conns);
    wait_until("descriptors returned", || open_fds(gw.pid()) <= baseline).await;
    let r = gw.client.get(gw.url("/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_alive_connections_idle_for_keepalive_idle_not_header_timeout() {
    let a = sim("a").await;
    let gw = Gateway::start(&format!(
        "[limits]\nheader_timeout = \"300ms\"\nkeepalive_idle = \"1500ms\"\n{}{}",
        pool_toml("p", &[a.addr().to_string()], ""),
        route_toml("r", "/", "p", "")
    ))
    .await;
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    let request = b"GET /v1/models HTTP/1.1\r\nHost: gw\r\n\r\n";
    let mut buf = vec![0u8; 65536];
    for _ in 0..2 {
        c.write_all(request).await.unwrap();
        let n = c.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        // Longer than header_timeout, shorter than keepalive_idle: still open.
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let idle_from = Instant::now();
    let got = until_closed(&mut c, Duration::from_secs(10)).await;
    assert!(got.is_empty());
    assert!(
        idle_from.elapsed() >= Duration::from_millis(500),
        "closed too early"
    );
    assert_eq!(a.stats().requests, 2);
}

/// An HTTP/2 frame header plus payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_are_closed() {
    let a = sim("a").await;
    let gw = Gateway::start(&format!(
        "[limits]\nkeepalive_idle = \"500ms\"\n{}{}",
        pool_toml("p", &[a.addr().to_string()], ""),
        route_toml("r", "/", "p", "")
    ))
    .await;
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let settings = frame(0x4, 0, 0, b"");
    // A HEADERS frame without END_HEADERS: the rest of the block never comes.
    let open_headers = frame(0x1, 0, 1, &[0x82]);
    for tail in [Vec::new(), open_headers] {
        let mut c = TcpStream::connect(gw.addr).await.unwrap();
        c.write_all(preface).await.unwrap();
        c.write_all(&settings).await.unwrap();
        c.write_all(&tail).await.unwrap();
        until_closed(&mut c, Duration::from_secs(10)).await;
    }
    assert_eq!(a.stats().requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_are_refused_with_503() {
    let a = sim("a").await;
    let gw = Gateway::start(&format!(
        "[limits]\nmax_connections = 4\n{}{}",
        pool_toml("p", &[a.addr().to_string()], ""),
        route_toml("r", "/", "p", "")
    ))
    .await;
    // The harness's readiness probe connected once; wait until it is gone.
    gw.wait_metric("ballast_client_connections", &[], 0.0).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(gw.addr).await.unwrap());
    }
    gw.wait_metric("ballast_client_connections", &[], 4.0).await;
    let reply = raw_exchange(gw.addr, b"GET /v1/models HTTP/1.1\r\nHost: gw\r\n\r\n").await;
    assert_eq!(reply.status(), Some(503), "{}", reply.text());
    assert!(
        reply.body().contains("gateway_overloaded"),
        "{}",
        reply.text()
    );
    assert!(reply.text().contains("retry-after: 1"), "{}", reply.text());
    assert!(reply.closed);
    assert_eq!(
        gw.metric(
            "ballast_connections_refused_total",
            &[("reason", "max_connections")]
        )
        .await,
        1.0
    );
    drop(held);
    gw.wait_metric("ballast_client_connections", &[], 0.0).await;
    let ok = raw_exchange(
        gw.addr,
        b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(ok.status(), Some(200), "{}", ok.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_fits_the_descriptor_limit() {
    let a = sim("a").await;
    // 300 descriptors carry (300 - 128) / 2 = 86 connections; the config's
    // 10,000 is lowered to that, and said so.
    let gw = Gateway::start_nofile(
        300,
        &format!(
            "{}{}",
            pool_toml("p", &[a.addr().to_string()], ""),
            route_toml("r", "/", "p", "")
        ),
    )
    .await;
    assert!(
        gw.log().contains("limits.max_connections lowered") && gw.log().contains("cap=86"),
        "{}",
        gw.log()
    );
    gw.wait_metric("ballast_client_connections", &[], 0.0).await;
    let mut held = Vec::new();
    for _ in 0..86 {
        held.push(TcpStream::connect(gw.addr).await.unwrap());
    }
    gw.wait_metric("ballast_client_connections", &[], 86.0)
        .await;
    // One more is refused with a 503 while descriptors remain: the admin
    // side and the backends are still reachable.
    let reply = raw_exchange(gw.addr, b"GET /v1/models HTTP/1.1\r\nHost: gw\r\n\r\n").await;
    assert_eq!(reply.status(), Some(503), "{}", reply.text());
    assert!(reply.body().contains("gateway_overloaded"));
    assert_eq!(
        gw.metric(
            "ballast_connections_refused_total",
            &[("reason", "max_connections")]
        )
        .await,
        1.0
    );
    drop(held);
    gw.wait_metric("ballast_client_connections", &[], 0.0).await;
    let r = gw.client.get(gw.url("/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}
