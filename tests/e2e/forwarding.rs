//! Who the client is, as the backend hears it: forwarding headers from an
//! untrusted peer are dropped (`X-Forwarded-For` becomes the peer), a
//! trusted proxy's are kept and appended to, and `Connection:` cannot strip
//! what the gateway sets or relies on.

use crate::harness::*;

const SPOOFED: &str = "Forwarded: for=203.0.113.9;proto=https\r\nX-Real-IP: 203.0.113.9\r\n\
    X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Port: 443\r\n\
    X-Forwarded-Proto: https\r\nX_Forwarded_For: 198.51.100.7\r\n";

async fn spoofing_request(gw: &Gateway) {
    let reply = raw_exchange(
        gw.addr,
        format!(
            "GET /x HTTP/1.1\r\nHost: gw\r\n{SPOOFED}Connection: close, x-forwarded-for, host\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(reply.status(), Some(200), "{}", reply.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_peer_cannot_say_who_the_client_is() {
    let a = sim("a").await;
    let gw = Gateway::one_pool(&[a.addr().to_string()], "").await;
    spoofing_request(&gw).await;
    let seen = &a.stats().log[0];
    assert_eq!(recorded_header(seen, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(recorded_header(seen, "x-forwarded-proto"), ["http"]);
    assert_eq!(recorded_header(seen, "host"), ["gw"]);
    for gone in [
        "forwarded",
        "x-real-ip",
        "x-forwarded-host",
        "x-forwarded-port",
        "x_forwarded_for",
    ] {
        assert!(
            recorded_header(seen, gone).is_empty(),
            "{gone} reached the backend"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_is_believed_and_appended_to() {
    let a = sim("a").await;
    let gw = Gateway::start_server(
        "trusted_proxies = [\"127.0.0.0/8\"]",
        &format!(
            "{}{}",
            pool_toml("p", &[a.addr().to_string()], ""),
            route_toml("r", "/", "p", "")
        ),
    )
    .await;
    spoofing_request(&gw).await;
    let seen = &a.stats().log[0];
    assert_eq!(
        recorded_header(seen, "x-forwarded-for"),
        ["203.0.113.9, 127.0.0.1"]
    );
    assert_eq!(recorded_header(seen, "x-forwarded-proto"), ["https"]);
    assert_eq!(recorded_header(seen, "x-real-ip"), ["203.0.113.9"]);
    assert_eq!(recorded_header(seen, "x-forwarded-host"), ["evil.example"]);
    assert!(recorded_header(seen, "x_forwarded_for").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_cannot_strip_framing_with_connection() {
    let backend = canned(
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: content-length, x-hop\r\nx-hop: 1\r\n\r\nhello",
    )
    .await;
    let gw = Gateway::one_pool(&[backend.addr.to_string()], "").await;
    let reply = raw_exchange(
        gw.addr,
        b"GET /x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    let text = reply.text().to_ascii_lowercase();
    assert_eq!(reply.status(), Some(200), "{text}");
    assert!(text.contains("content-length: 5\r\n"), "{text}");
    assert!(!text.contains("x-hop"), "{text}");
    assert_eq!(reply.body(), "hello");
}
