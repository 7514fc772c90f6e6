//! TLS on the client side: HTTP/1.1 and HTTP/2 by ALPN for curl, reqwest
//! and the `openai` client; plain HTTP on the TLS port and TLS on a plain
//! port refused cleanly; a handshake that never finishes is closed; the
//! certificate's expiry in `/metrics` and `/status`.

use crate::certs::Pki;
use crate::harness::*;
use futures_util::StreamExt;
use std::process::Command;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const STREAM: &str =
    r#"{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"stream":true}"#;

/// A TLS gateway (certificate for 127.0.0.1 and localhost) in front of
/// `backend`; `limits` are extra `[limits]` keys.
async fn tls_gateway(pki: &Pki, backend: &str, limits: &str) -> Gateway {
    let pair = pki.server("gateway", &["127.0.0.1", "localhost"]);
    Gateway::start_server(
        &format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}\n",
            pair.cert.display(),
            pair.key.display()
        ),
        &format!(
            "[limits]\n{limits}\n{}{}",
            pool_toml("p", &[backend.to_string()], ""),
            route_toml("r", "/", "p", "openai = true")
        ),
    )
    .await
}

fn https(gw: &Gateway, path: &str) -> String {
    format!("https://{}{}", gw.addr, path)
}

fn client(pki: &Pki, http1: bool) -> reqwest::Client {
    pki.https_client(http1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_get_answers_and_streams_over_http1_and_http2() {
    let pki = Pki::new("clients");
    let a = sim("a").await;
    let gw = tls_gateway(&pki, &a.addr().to_string(), "").await;

    for (http1, version) in [
        (true, reqwest::Version::HTTP_11),
        (false, reqwest::Version::HTTP_2),
    ] {
        let c = client(&pki, http1);
        let r = c.get(https(&gw, "/echo")).send().await.unwrap();
        assert_eq!(r.version(), version);
        assert_eq!(r.status(), 200);
        let echo: serde_json::Value = r.json().await.unwrap();
        assert_eq!(echo["headers"]["x-forwarded-proto"], "https");

        let r = c
            .post(https(&gw, "/v1/chat/completions"))
            .body(STREAM)
            .send()
            .await
            .unwrap();
        assert_eq!((r.version(), r.status().as_u16()), (version, 200));
        let mut body = r.bytes_stream();
        let mut text = String::new();
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(
                &chunk.expect("stream ends cleanly"),
            ));
        }
        assert_eq!(text.matches("chat.completion.chunk").count(), 16);
        assert!(text.trim_end().ends_with("data: [DONE]"));
    }

    // curl with the CA, both protocols, TLS 1.3 and 1.2.
    let cases: [(&[&str], &str); 3] = [
        (&["--http1.1", "--tlsv1.3"], "1.1"),
        (&["--http2", "--tlsv1.3"], "2"),
        (&["--http2", "--tls-max", "1.2"], "2"),
    ];
    for (flags, want) in cases {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "20", "--cacert"])
            .arg(&pki.ca_file)
            .args(flags)
            .args(["-o", "/dev/null", "-w", "%{http_code} %{http_version}"])
            .arg(https(&gw, "/v1/models"))
            .output()
            .expect("curl runs");
        let shown = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            shown,
            format!("200 {want}"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The official openai client, its httpx client trusting the test CA.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/openai_client.py");
    for scenario in ["chat", "stream"] {
        let out = Command::new("python3")
            .arg(script)
            .arg(https(&gw, "/v1"))
            .arg(scenario)
            .env("BALLAST_TEST_CA", &pki.ca_file)
            .output()
            .expect("python3 runs");
        let line = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(line.trim())
            .unwrap_or_else(|_| panic!("{line}{}", String::from_utf8_lossy(&out.stderr)));
        assert_eq!(v["ok"], true, "{v}");
        assert!(v["content"].as_str().unwrap().starts_with("tok0"), "{v}");
    }
    let paths: Vec<String> = a
        .stats()
        .log
        .iter()
        .map(|r| format!("{} {} {}", r.method, r.path, r.version))
        .collect();
    assert_eq!(a.stats().requests, 9, "{paths:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrong_protocol_on_either_port_is_refused_cleanly() {
    let pki = Pki::new("refusals");
    let a = sim("a").await;
    let gw = tls_gateway(&pki, &a.addr().to_string(), "").await;

    // Plain HTTP on the TLS port: a plain 400 saying what to do.
    let reply = raw_exchange(gw.addr, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(reply.status(), Some(400), "{}", reply.text());
    assert!(reply.body().contains("tls_required"), "{}", reply.text());
    assert_eq!(
        gw.metric(
            "ballast_connections_refused_total",
            &[("reason", "plain_http_on_tls")]
        )
        .await,
        1.0
    );

    // TLS on a plain port: the client's handshake fails; nothing hangs.
    let plain = Gateway::one_pool(&[a.addr().to_string()], "").await;
    let err = client(&pki, false)
        .get(format!("https://{}/v1/models", plain.addr))
        .send()
        .await
        .expect_err("no TLS on a plain port");
    assert!(err.is_connect() || err.is_request(), "{err:?}");
    assert_eq!(
        plain
            .client
            .get(plain.url("/v1/models"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Both still serve, and nothing reached the backend but real requests.
    let r = client(&pki, false)
        .get(https(&gw, "/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(a.stats().requests, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_never_finishes_is_closed_after_header_timeout() {
    let pki = Pki::new("slow");
    let a = sim("a").await;
    // Long enough that the test itself, descheduled on a busy machine,
    // still sends its half ClientHello well within it.
    let gw = tls_gateway(&pki, &a.addr().to_string(), "header_timeout = \"2s\"").await;
    // Nothing at all, then half a ClientHello.
    let mut silent = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let reply = read_until_closed(&mut silent, Duration::from_secs(10)).await;
    assert!(reply.closed && reply.bytes.is_empty());
    let mut partial = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .unwrap();
    let reply = read_until_closed(&mut partial, Duration::from_secs(10)).await;
    assert!(reply.closed && reply.bytes.is_empty());
    assert!(
        gw.metric(
            "ballast_connections_refused_total",
            &[("reason", "tls_handshake")]
        )
        .await
            >= 1.0
    );
    let r = client(&pki, false)
        .get(https(&gw, "/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificates_expiry_is_exported_and_shown() {
    let pki = Pki::new("expiry");
    let a = sim("a").await;
    let gw = tls_gateway(&pki, &a.addr().to_string(), "").await;
    let listener = gw.addr.to_string();
    let expiry = gw
        .metric(
            "ballast_tls_cert_expiry_timestamp_seconds",
            &[("listener", &listener)],
        )
        .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    // rcgen's default validity runs to 4096.
    assert!(expiry > now + 365.0 * 86400.0, "{expiry}");
    let status = gw.status_json().await;
    assert_eq!(status["tls"]["expires_at_unix"].as_f64(), Some(expiry));
    assert!(status["tls"]["cert"]
        .as_str()
        .unwrap()
        .ends_with("gateway.pem"));
}

/// A client that sends an IP address as SNI (wrk, `openssl s_client`) is
/// served, and the handshake leaves nothing in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ip_address_as_sni_is_served_without_log_noise() {
    let pki = Pki::new("sni");
    let a = sim("a").await;
    let gw = tls_gateway(&pki, &a.addr().to_string(), "").await;
    let addr = gw.addr.to_string();
    let ca = pki.ca_file.clone();
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = Command::new("openssl")
            .args([
                "s_client",
                "-quiet",
                "-connect",
                &addr,
                "-servername",
                "127.0.0.1",
            ])
            .arg("-CAfile")
            .arg(&ca)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("openssl runs");
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        drop(stdin);
        out
    })
    .await
    .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.starts_with("HTTP/1.1 200"),
        "{shown}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = gw.log();
    assert!(!log.contains("SNI"), "{log}");
}
