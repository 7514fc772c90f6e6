//! Only the route's protocols are switched to: any other `Upgrade` (h2c
//! above all) is dropped and the request served as an ordinary one, and a
//! `101` that switches to something nobody offered is a 502, never a tunnel.

use crate::harness::*;

fn lower(s: &str) -> String {
    s.to_ascii_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upgrade_is_served_as_an_ordinary_request() {
    let a = sim("a").await;
    let gw = Gateway::one_pool(&[a.addr().to_string()], "").await;
    let reply = raw_exchange(
        gw.addr,
        b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status(), Some(200), "{}", reply.text());
    assert!(reply.closed);
    let seen = a.stats().log;
    assert_eq!(seen.len(), 1);
    for (name, value) in &seen[0].headers {
        assert!(
            !matches!(name.as_str(), "upgrade" | "http2-settings")
                && !lower(value).contains("upgrade"),
            "{name}: {value} reached the backend"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_nobody_offered_is_a_502_not_a_tunnel() {
    let backend =
        canned("HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
            .await;
    let gw = Gateway::one_pool(&[backend.addr.to_string()], "max_fails = 0").await;

    // A WebSocket offer answered with a switch to h2c; then no offer at all
    // (h2c was dropped) answered with a switch anyway.
    for request in [
        "GET /ws HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: gw\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
    ] {
        let reply = raw_exchange(gw.addr, request.as_bytes()).await;
        assert_eq!(reply.status(), Some(502), "{}", reply.text());
        assert!(
            reply.body().contains("upstream_bad_upgrade"),
            "{}",
            reply.text()
        );
        assert!(!reply.text().contains("SMUGGLED"), "{}", reply.text());
        assert!(reply.closed, "the connection stayed open");
    }
    let heads = backend.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 2);
    assert!(
        lower(&heads[0]).contains("upgrade: websocket"),
        "{}",
        heads[0]
    );
    assert!(!lower(&heads[1]).contains("upgrade"), "{}", heads[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_without_upgrades_never_switches() {
    let a = sim("a").await;
    let gw = Gateway::start(&format!(
        "{}{}",
        pool_toml("p", &[a.addr().to_string()], ""),
        route_toml("r", "/", "p", "upgrades = []")
    ))
    .await;
    let reply = raw_exchange(
        gw.addr,
        b"GET /ws HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    assert_ne!(reply.status(), Some(101), "{}", reply.text());
    assert_eq!(a.stats().websockets_opened, 0);
    let seen = a.stats().log;
    assert!(seen[0].headers.iter().all(|(n, _)| n != "upgrade"));
}
