//! A pool's credential goes to that pool's servers and nowhere else: every
//! attempt carries the `Host` and key of the pool it is sent to.

use crate::harness::*;

const KEY_HOSTED: &str = "sk-hosted-5f1e0c2a";
const KEY_OTHER: &str = "sk-other-9b7d4e11";
const CLIENT_KEY: &str = "client-own-3c8a";

fn carries(rec: &ballast::sim::RequestRecord, secret: &str) -> bool {
    rec.headers.iter().any(|(_, v)| v.contains(secret))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallbacks_get_their_own_key_and_host_never_the_primarys() {
    let hosted = sim("hosted").await;
    let other = sim("other").await;
    let local = sim("local").await;
    hosted.set_fault(status(503));
    other.set_fault(status(503));
    let gw = Gateway::start_env(
        &format!(
            "{}{}{}{}[route.retry]\nattempts = 1\n",
            pool_toml(
                "hosted",
                &[hosted.addr().to_string()],
                "api_key_env = \"BALLAST_TEST_KEY_HOSTED\"\nhost = \"api.hosted.example\""
            ),
            pool_toml(
                "other",
                &[other.addr().to_string()],
                "api_key_env = \"BALLAST_TEST_KEY_OTHER\"\nhost = \"api.other.example\""
            ),
            pool_toml("local", &[local.addr().to_string()], ""),
            route_toml(
                "r",
                "/v1/",
                "hosted",
                "fallback = [{ pool = \"other\", model = \"other-model\" }, { pool = \"local\" }]"
            ),
        ),
        &[
            ("BALLAST_TEST_KEY_HOSTED", KEY_HOSTED),
            ("BALLAST_TEST_KEY_OTHER", KEY_OTHER),
        ],
    )
    .await;

    let r = gw
        .client
        .post(gw.url("/v1/echo"))
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .body(r#"{"model":"m","messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-sim-server"], "local");

    // Each pool saw exactly one attempt, with its own Host and key.
    let h = hosted.stats().log;
    let o = other.stats().log;
    let l = local.stats().log;
    assert_eq!((h.len(), o.len(), l.len()), (1, 1, 1));
    assert_eq!(
        recorded_header(&h[0], "authorization"),
        [format!("Bearer {KEY_HOSTED}")]
    );
    assert_eq!(recorded_header(&h[0], "host"), ["api.hosted.example"]);
    assert_eq!(
        recorded_header(&o[0], "authorization"),
        [format!("Bearer {KEY_OTHER}")]
    );
    assert_eq!(recorded_header(&o[0], "host"), ["api.other.example"]);
    // A pool that injects no key gets the client's own, and its own Host.
    assert_eq!(
        recorded_header(&l[0], "authorization"),
        [format!("Bearer {CLIENT_KEY}")]
    );
    assert_eq!(recorded_header(&l[0], "host"), [gw.addr.to_string()]);

    // No secret crossed a pool, and the client's key never reached a pool
    // that injects one.
    assert!(!carries(&h[0], KEY_OTHER) && !carries(&h[0], CLIENT_KEY));
    assert!(!carries(&o[0], KEY_HOSTED) && !carries(&o[0], CLIENT_KEY));
    assert!(!carries(&l[0], KEY_HOSTED) && !carries(&l[0], KEY_OTHER));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_goes_in_the_header_the_pool_names() {
    let hosted = sim("hosted").await;
    let gw = Gateway::start_env(
        &format!(
            "{}{}",
            pool_toml(
                "hosted",
                &[hosted.addr().to_string()],
                "api_key_env = \"BALLAST_TEST_KEY_HOSTED\"\napi_key_header = \"X-Api-Key\""
            ),
            route_toml("r", "/", "hosted", "")
        ),
        &[("BALLAST_TEST_KEY_HOSTED", KEY_HOSTED)],
    )
    .await;
    let r = gw
        .client
        .post(gw.url("/v1/echo"))
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .header("x-api-key", "client-x-api-key")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let log = hosted.stats().log;
    // The bare key in its own header; neither of the client's credentials.
    assert_eq!(recorded_header(&log[0], "x-api-key"), [KEY_HOSTED]);
    assert!(recorded_header(&log[0], "authorization").is_empty());
    assert!(!carries(&log[0], CLIENT_KEY) && !carries(&log[0], "client-x-api-key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_cannot_be_a_header_stops_start_up_without_showing_it() {
    let a = sim("a").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ballast.toml");
    let [admin, listen] = free_ports::<2>();
    std::fs::write(
        &path,
        format!(
            "[admin]\nlisten = \"127.0.0.1:{}\"\n[server]\nlisten = [\"127.0.0.1:{}\"]\n{}{}",
            admin,
            listen,
            pool_toml(
                "p",
                &[a.addr().to_string()],
                "api_key_env = \"BALLAST_TEST_BAD_KEY\""
            ),
            route_toml("r", "/", "p", "")
        ),
    )
    .unwrap();
    let out = run_expecting_exit(&path, &[("BALLAST_TEST_BAD_KEY", "sk-line1\nsk-line2")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pool 'p'") && err.contains("BALLAST_TEST_BAD_KEY"),
        "{err}"
    );
    assert!(!err.contains("sk-line"), "the key was shown: {err}");
}

/// Every secret the leak test configures or sends.
const SECRETS: [&str; 3] = [KEY_HOSTED, KEY_OTHER, CLIENT_KEY];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_line_a_metric_the_status_or_an_error_body() {
    let hosted = sim("hosted").await;
    let other = sim("other").await;
    let dead = dead_addr();
    // `trace` logs everything `info` and `debug` do, and more.
    let gw = Gateway::start_env(
        &format!(
            "[log]\nlevel = \"trace\"\n[limits]\nmax_request_body = \"4KiB\"\n{}{}{}{}{}[route.retry]\nattempts = 2\nbackoff_base = \"10ms\"\n{}",
            pool_toml(
                "hosted",
                &[hosted.addr().to_string()],
                "api_key_env = \"BALLAST_TEST_KEY_HOSTED\"\nhost = \"api.hosted.example\""
            ),
            pool_toml(
                "other",
                &[other.addr().to_string()],
                "api_key_env = \"BALLAST_TEST_KEY_OTHER\""
            ),
            pool_toml(
                "down",
                std::slice::from_ref(&dead),
                "api_key_env = \"BALLAST_TEST_KEY_HOSTED\""
            ),
            route_toml("down", "/down/", "down", ""),
            route_toml(
                "chat",
                "/v1/",
                "hosted",
                "openai = true\nfallback = [{ pool = \"other\" }]"
            ),
            route_toml("plain", "/plain/", "hosted", ""),
        ),
        &[
            ("BALLAST_TEST_KEY_HOSTED", KEY_HOSTED),
            ("BALLAST_TEST_KEY_OTHER", KEY_OTHER),
        ],
    )
    .await;
    let auth = format!("Bearer {CLIENT_KEY}");
    let chat = r#"{"model":"sim-model","messages":[{"role":"user","content":"hi"}]}"#;
    let mut bodies: Vec<String> = Vec::new();
    let send = |r: reqwest::RequestBuilder| {
        let r = r
            .header("authorization", &auth)
            .header("x-api-key", CLIENT_KEY);
        async move {
            let resp = r.send().await.expect("an answer");
            let head = format!("{:?}", resp.headers());
            format!("{head}\n{}", resp.text().await.unwrap_or_default())
        }
    };

    // Served, streamed, failed over, refused at the edge, failed upstream.
    bodies.push(send(gw.client.post(gw.url("/v1/chat/completions")).body(chat)).await);
    let stream = chat.replace("}]}", r#"}],"stream":true}"#);
    bodies.push(send(gw.client.post(gw.url("/v1/chat/completions")).body(stream)).await);
    hosted.set_fault(status(503));
    bodies.push(send(gw.client.post(gw.url("/v1/chat/completions")).body(chat)).await);
    hosted.set_fault(status(500));
    bodies.push(send(gw.client.get(gw.url("/plain/x"))).await);
    hosted.set_fault(ballast::sim::Fault::default());
    bodies.push(
        send(
            gw.client
                .post(gw.url("/v1/chat/completions"))
                .body("{bad json"),
        )
        .await,
    );
    bodies.push(
        send(
            gw.client
                .post(gw.url("/v1/chat/completions"))
                .body(vec![b'x'; 8192]),
        )
        .await,
    );
    bodies.push(send(gw.client.get(gw.url("/nowhere"))).await);
    bodies.push(send(gw.client.get(gw.url("/down/x"))).await);
    bodies.push(send(gw.client.get(gw.url("/down/x"))).await);
    // Malformed heads that carry credentials, as raw bytes.
    for raw in [
        format!("GET /v1/models HTTP/1.1\r\nHost: a\r\nAuthorization: {auth}\r\nBad Header: x\r\nConnection: close\r\n\r\n"),
        format!("GET /v1/models HTTP/1.1\r\nAuthorization: {auth}\r\nx-api-key: {CLIENT_KEY}\r\nHost: a\r\n\x01: y\r\n\r\n"),
        format!("GET /v1/\x7f HTTP/1.1\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"),
        format!("POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nAuthorization: {auth}\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello"),
    ] {
        bodies.push(raw_exchange(gw.addr, raw.as_bytes()).await.text());
    }

    let metrics = gw.metrics().await;
    let status = gw.status_json().await.to_string();
    let log = gw.log();
    assert!(log.contains("ballast::access"), "the log is empty: {log}");
    for secret in SECRETS {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
        assert!(!metrics.contains(secret), "{secret} in /metrics");
        assert!(!status.contains(secret), "{secret} in /status");
        // A backend's own answer (the simulator echoes what it received)
        // is the backend's business; every answer the gateway made is ours.
        for body in bodies.iter().filter(|b| !b.contains("x-sim-server")) {
            assert!(!body.contains(secret), "{secret} in an answer: {body}");
        }
    }
    // The pool's key did reach its own servers.
    assert!(hosted.stats().log.iter().all(|r| r
        .headers
        .contains(&("authorization".into(), format!("Bearer {KEY_HOSTED}")))));
}
