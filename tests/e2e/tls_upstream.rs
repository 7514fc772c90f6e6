//! Pools over TLS: verified against a private CA, refused (and failed over)
//! for a wrong CA, a wrong name or an expired certificate, a client
//! certificate for servers that ask for one, and HTTP/2 by ALPN with one
//! shared connection.

use crate::certs::{Pair, Pki};
use crate::harness::*;
use ballast::config::TlsFiles;
use ballast::sim::{Fault, FaultKind, SimOptions, SimServer};
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const CHAT: &str = r#"{"model":"sim-model","messages":[{"role":"user","content":"hi"}]}"#;
const STREAM: &str =
    r#"{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"stream":true}"#;

fn files(pair: &Pair) -> Option<TlsFiles> {
    Some(TlsFiles {
        cert: pair.cert.clone(),
        key: pair.key.clone(),
    })
}

async fn tls_sim(name: &str, pair: &Pair, http2: bool) -> SimServer {
    sim_with(
        name,
        SimOptions {
            tls: files(pair),
            http2,
            ..SimOptions::default()
        },
    )
    .await
}

fn tls_pool(pki: &Pki, extra: &str) -> String {
    format!(
        "tls = true\nca_file = \"{}\"\n{extra}",
        pki.ca_file.display()
    )
}

/// A WebSocket to the gateway's `/ws`.
async fn websocket(
    gw: &Gateway,
) -> (
    tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    http::Response<Option<Vec<u8>>>,
) {
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tokio_tungstenite::client_async(format!("ws://{}/ws", gw.addr), tcp)
        .await
        .expect("WebSocket through the gateway")
}

async fn post(gw: &Gateway, path: &str, body: &'static str) -> reqwest::Response {
    gw.client
        .post(gw.url(path))
        .body(body)
        .send()
        .await
        .expect("request through the gateway")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_pool_serves_answers_streams_and_websockets() {
    let pki = Pki::new("private");
    let a = tls_sim("a", &pki.server("a", &["127.0.0.1"]), false).await;
    let gw = Gateway::one_pool(&[a.addr().to_string()], &tls_pool(&pki, "")).await;

    let r = post(&gw, "/v1/chat/completions", CHAT).await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .starts_with("tok0"));

    let r = post(&gw, "/v1/chat/completions", STREAM).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert_eq!(text.matches("chat.completion.chunk").count(), 16);

    let (mut ws, resp) = websocket(&gw).await;
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("over tls")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed, Message::text("over tls"));
    ws.close(None).await.unwrap();

    let stats = a.stats();
    assert_eq!(stats.requests, 3);
    assert!(stats.log.iter().all(|r| r.version == "HTTP/1.1"));
    assert_eq!(stats.websockets_opened, 1);
    let status = gw.status_json().await;
    assert_eq!(status["pools"][0]["tls"], true);
}

/// A pool of a server that fails verification and a good one: every
/// request is served by the good one, the bad one's attempts are
/// `connect_error`s, and the log says why.
async fn refused_then_served(bad: &SimServer, good: &SimServer, extra: &str, reason: &str) {
    let gw = Gateway::one_pool(&[bad.addr().to_string(), good.addr().to_string()], extra).await;
    let bad_addr = bad.addr().to_string();
    let attempts = [
        ("pool", "p"),
        ("server", bad_addr.as_str()),
        ("outcome", "connect_error"),
    ];
    for _ in 0..40 {
        let r = post(&gw, "/v1/chat/completions", CHAT).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-sim-server"], "good");
        if gw
            .metric("ballast_upstream_attempts_total", &attempts)
            .await
            >= 1.0
        {
            break;
        }
    }
    assert!(
        gw.metric("ballast_upstream_attempts_total", &attempts)
            .await
            >= 1.0
    );
    assert_eq!(
        bad.stats().requests,
        0,
        "nothing may reach an unverified server"
    );
    let log = gw.log();
    assert!(
        log.contains("TLS handshake with the server failed") && log.contains(reason),
        "log should say {reason:?}:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_that_fail_verification_are_connect_errors_and_others_serve() {
    let pki = Pki::new("trusted");
    let stranger = Pki::new("stranger");
    let good = tls_sim("good", &pki.server("good", &["127.0.0.1"]), false).await;

    let unknown = tls_sim("bad", &stranger.server("bad", &["127.0.0.1"]), false).await;
    refused_then_served(&unknown, &good, &tls_pool(&pki, ""), "unknown issuer").await;

    let other_name = tls_sim("bad", &pki.server("other", &["other.test"]), false).await;
    refused_then_served(&other_name, &good, &tls_pool(&pki, ""), "name mismatch").await;

    // The name a pool expects is `sni`, whatever address it dials.
    let named = tls_sim("bad", &pki.server("named", &["api.test"]), false).await;
    let gw = Gateway::one_pool(
        &[named.addr().to_string()],
        &tls_pool(&pki, "sni = \"api.test\""),
    )
    .await;
    assert_eq!(post(&gw, "/v1/chat/completions", CHAT).await.status(), 200);
    drop(gw);

    let expired = tls_sim("bad", &pki.expired_server("old", &["127.0.0.1"]), false).await;
    refused_then_served(&expired, &good, &tls_pool(&pki, ""), "expired").await;

    // A plain-HTTP server in a TLS pool is never spoken to in clear.
    let plain = sim("bad").await;
    refused_then_served(&plain, &good, &tls_pool(&pki, ""), "TLS").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_wants_a_client_certificate_gets_the_pools() {
    let pki = Pki::new("mtls");
    let server = pki.server("srv", &["127.0.0.1"]);
    let client = pki.client("client", "ballast");
    let a = sim_with(
        "a",
        SimOptions {
            tls: files(&server),
            client_ca: Some(pki.ca_file.clone()),
            ..SimOptions::default()
        },
    )
    .await;
    let gw = Gateway::one_pool(
        &[a.addr().to_string()],
        &tls_pool(
            &pki,
            &format!(
                "client_cert = \"{}\"\nclient_key = \"{}\"",
                client.cert.display(),
                client.key.display()
            ),
        ),
    )
    .await;
    assert_eq!(post(&gw, "/v1/chat/completions", CHAT).await.status(), 200);
    drop(gw);

    // Without one, the handshake is refused: a connect error, said so.
    let gw = Gateway::start(&format!(
        "{}{}[route.retry]\nattempts = 1\n",
        pool_toml("p", &[a.addr().to_string()], &tls_pool(&pki, "")),
        route_toml("r", "/", "p", "")
    ))
    .await;
    let r = post(&gw, "/v1/chat/completions", CHAT).await;
    assert_eq!(r.status(), 502);
    let log = gw.log();
    assert!(
        log.contains("TLS handshake with the server failed"),
        "{log}"
    );
    assert_eq!(a.stats().requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_is_used_when_offered_and_never_when_told() {
    let pki = Pki::new("h2");
    let pair = pki.server("h2", &["127.0.0.1"]);
    let a = tls_sim("a", &pair, true).await;
    let gw = Gateway::one_pool(&[a.addr().to_string()], &tls_pool(&pki, "")).await;
    // One request opens the connection; then concurrent ones share it.
    assert_eq!(post(&gw, "/v1/chat/completions", CHAT).await.status(), 200);
    let many: Vec<_> = (0..10)
        .map(|_| post(&gw, "/v1/chat/completions", STREAM))
        .collect();
    for r in futures_util::future::join_all(many).await {
        assert_eq!(r.status(), 200);
        assert!(r.text().await.unwrap().contains("data: [DONE]"));
    }
    let stats = a.stats();
    assert_eq!(
        stats.http2_requests,
        11,
        "{:?}",
        stats.log.iter().map(|r| &r.version).collect::<Vec<_>>()
    );
    assert!(
        stats.connections_accepted < 5,
        "11 requests took {} connections",
        stats.connections_accepted
    );
    // An upgrade still goes over HTTP/1.1.
    let (ws, resp) = websocket(&gw).await;
    assert_eq!(resp.status(), 101);
    drop(ws);
    drop(gw);

    let b = tls_sim("b", &pair, true).await;
    let gw = Gateway::one_pool(
        &[b.addr().to_string()],
        &tls_pool(&pki, "http2 = \"never\""),
    )
    .await;
    assert_eq!(post(&gw, "/v1/chat/completions", CHAT).await.status(), 200);
    let stats = b.stats();
    assert_eq!((stats.requests, stats.http2_requests), (1, 0));

    // Prior knowledge on a plain pool: h2c.
    let c = sim_with(
        "c",
        SimOptions {
            http2: true,
            ..SimOptions::default()
        },
    )
    .await;
    let gw = Gateway::one_pool(&[c.addr().to_string()], "http2 = \"always\"").await;
    assert_eq!(post(&gw, "/v1/chat/completions", CHAT).await.status(), 200);
    assert_eq!(c.stats().http2_requests, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_resets_its_http2_stream_not_the_connection() {
    let pki = Pki::new("reset");
    let a = sim_with(
        "a",
        SimOptions {
            tls: files(&pki.server("a", &["127.0.0.1"])),
            http2: true,
            tokens: 200,
            token_interval: Duration::from_millis(50),
            ..SimOptions::default()
        },
    )
    .await;
    let server = a.addr().to_string();
    let gw = Gateway::one_pool(
        std::slice::from_ref(&server),
        &tls_pool(&pki, "max_fails = 0"),
    )
    .await;
    let r = post(&gw, "/v1/chat/completions", STREAM).await;
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    assert!(body.next().await.is_some());
    drop(body);
    wait_until("the backend never saw its stream reset", || {
        a.stats().streams_reset == 1
    })
    .await;
    gw.wait_server(&server, "idle", |s| s["outstanding"] == 0)
        .await;

    // The shared connection is still there and carries the next request.
    a.set_fault(Fault::new(FaultKind::None));
    assert_eq!(post(&gw, "/v1/models", "").await.status(), 200);
    let stats = a.stats();
    assert_eq!(stats.connections_accepted, 1);
    assert_eq!(stats.http2_requests, 2);

    // First-byte failover works over HTTP/2 as over HTTP/1.1.
    let b = tls_sim("b", &pki.server("b", &["127.0.0.1"]), true).await;
    a.set_fault(Fault::new(FaultKind::Hang));
    let gw = Gateway::start(&format!(
        "{}{}[route.timeouts]\nfirst_byte = \"300ms\"\n[route.retry]\non = [\"timeout\"]\nattempts = 2\n",
        pool_toml(
            "p",
            &[a.addr().to_string(), b.addr().to_string()],
            &tls_pool(&pki, "max_fails = 0")
        ),
        route_toml("r", "/", "p", "")
    ))
    .await;
    for _ in 0..4 {
        let r = post(&gw, "/v1/chat/completions", CHAT).await;
        let status = r.status();
        let server = r.headers().get("x-sim-server").cloned();
        assert_eq!(status, 200, "{}\n{}", r.text().await.unwrap(), gw.log());
        assert_eq!(server.unwrap(), "b");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_speak_tls_and_say_why_a_server_is_down() {
    let pki = Pki::new("health");
    let stranger = Pki::new("stranger");
    let good = tls_sim("good", &pki.server("good", &["127.0.0.1"]), true).await;
    let bad = tls_sim("bad", &stranger.server("bad", &["127.0.0.1"]), false).await;
    let bad_addr = bad.addr().to_string();
    let good_addr = good.addr().to_string();
    let gw = Gateway::one_pool(
        &[good_addr.clone(), bad_addr.clone()],
        &tls_pool(
            &pki,
            "[pool.health]\ninterval = \"100ms\"\ntimeout = \"1s\"\nrise = 1\nfall = 1",
        ),
    )
    .await;
    gw.wait_server(&bad_addr, "down", |s| s["state"] == "down")
        .await;
    wait_until("the good server was never checked", || {
        good.stats().health_checks >= 2
    })
    .await;
    assert_eq!(gw.server_status(&good_addr).await["state"], "up");
    assert_eq!(bad.stats().health_checks, 0);
    let log = gw.log();
    assert!(
        log.contains("health checks failing") && log.contains("unknown issuer"),
        "{log}"
    );
}

/// The shape of config/examples/deepseek.toml, end to end: clients over
/// TLS; a hosted API reached by name (a test name server), over verified
/// TLS and HTTP/2, with its key; when it says "server busy", the local
/// pool answers instead, without the hosted pool's key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_hosted_api_falls_back_to_the_local_pool() {
    let pki = Pki::new("hosted");
    let dns = crate::dns::TestDns::start().await;
    dns.answer("api.hosted.test", &[std::net::Ipv4Addr::LOCALHOST]);
    let hosted = tls_sim("hosted", &pki.server("api", &["api.hosted.test"]), true).await;
    let local = sim("local").await;
    let gateway_cert = pki.server("gateway", &["127.0.0.1"]);
    let gw = Gateway::start_server_env(
        &format!(
            "resolver = [\"{}\"]\ntls = {{ cert = \"{}\", key = \"{}\" }}",
            dns.addr,
            gateway_cert.cert.display(),
            gateway_cert.key.display()
        ),
        &format!(
            "{}{}{}[route.retry]\nattempts = 1\n",
            pool_toml(
                "hosted",
                &[format!("api.hosted.test:{}", hosted.addr().port())],
                &tls_pool(
                    &pki,
                    "host = \"api.hosted.test\"\napi_key_env = \"BALLAST_TEST_HOSTED_KEY\"",
                ),
            ),
            pool_toml("local", &[local.addr().to_string()], ""),
            route_toml(
                "chat",
                "/v1/",
                "hosted",
                "openai = true\nfallback = [{ pool = \"local\", model = \"local-int8\" }]"
            ),
        ),
        &[("BALLAST_TEST_HOSTED_KEY", "sk-hosted-test")],
    )
    .await;
    let member = format!("api.hosted.test:{} (127.0.0.1)", hosted.addr().port());
    gw.wait_server(&member, "up", |s| s["state"] == "up").await;
    let client = pki.https_client(false);
    let url = format!("https://{}/v1/chat/completions", gw.addr);

    let r = client.post(&url).body(CHAT).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-sim-server"], "hosted");

    hosted.set_fault(Fault {
        kind: FaultKind::Status {
            code: 503,
            retry_after: Some("5".into()),
        },
        latency: None,
        times: None,
    });
    let r = client
        .post(&url)
        .header("authorization", "Bearer client-own")
        .body(CHAT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-sim-server"], "local");

    let seen = hosted.stats().log;
    assert_eq!(seen.len(), 2);
    for rec in &seen {
        assert_eq!(rec.version, "HTTP/2");
        assert_eq!(
            recorded_header(rec, "authorization"),
            ["Bearer sk-hosted-test"]
        );
        assert_eq!(recorded_header(rec, "host"), ["api.hosted.test"]);
    }
    let fell_back = &local.stats().log[0];
    assert_eq!(
        recorded_header(fell_back, "authorization"),
        ["Bearer client-own"]
    );
    assert!(!fell_back
        .headers
        .iter()
        .any(|(_, v)| v.contains("sk-hosted-test")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_http2_stream_is_ended_like_an_http1_one() {
    let pki = Pki::new("stall");
    let a = sim_with(
        "a",
        SimOptions {
            tls: files(&pki.server("a", &["127.0.0.1"])),
            http2: true,
            token_interval: Duration::from_millis(5),
            ..SimOptions::default()
        },
    )
    .await;
    a.set_fault(Fault::new(FaultKind::StallMidStream { after_tokens: 2 }));
    let gw = Gateway::start(&format!(
        "{}{}[route.timeouts]\nstream_idle = \"300ms\"\n",
        pool_toml(
            "p",
            &[a.addr().to_string()],
            &tls_pool(&pki, "max_fails = 0")
        ),
        route_toml("r", "/", "p", "openai = true")
    ))
    .await;
    let r = post(&gw, "/v1/chat/completions", STREAM).await;
    assert_eq!(r.status(), 200);
    let (text, clean) = read_to_end(r.bytes_stream()).await;
    assert!(!clean, "a stalled stream must not end cleanly: {text}");
    assert!(text.contains("upstream_stream_interrupted"), "{text}");
    assert_eq!(text.matches("chat.completion.chunk").count(), 2);
    gw.wait_metric(
        "ballast_stream_aborts_total",
        &[("reason", "upstream_stalled")],
        1.0,
    )
    .await;
    // The gateway gave up on the stream: the backend saw it reset.
    wait_until("the stalled stream was never reset", || {
        a.stats().streams_reset == 1
    })
    .await;
    assert_eq!(a.stats().http2_requests, 1);
}
