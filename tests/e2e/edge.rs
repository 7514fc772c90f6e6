//! The edge step: compressed request bodies, OpenAI validation, routing by
//! model, response compression, and the `[DONE]` rule of OpenAI streams.

use crate::harness::*;
use ballast::sim::{Fault, FaultKind, SimOptions};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use std::io::Write;

fn sha(b: &[u8]) -> String {
    format!("{:x}", Sha256::digest(b))
}

fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        w.write_all(data).unwrap();
    }
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    w.write_all(data).unwrap();
    w.finish().unwrap()
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut w = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    w.write_all(data).unwrap();
    w.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

fn prompt(len: usize) -> Vec<u8> {
    let text: String = (0..)
        .map(|i| format!("word{i} "))
        .take(len / 6 + 1)
        .collect();
    let body =
        serde_json::json!({"model": "sim-model", "messages": [{"role": "user", "content": text}]});
    let mut v = serde_json::to_vec(&body).unwrap();
    v.truncate(v.len().max(len));
    v
}

async fn code(r: reqwest::Response) -> String {
    let v: serde_json::Value = r.json().await.unwrap();
    v["error"]["code"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_bodies_reach_the_backend_decoded() {
    let a = sim("a").await;
    let gw = Gateway::one_pool(&[a.addr().to_string()], "").await;
    let plain = prompt(200_000);
    for (name, wire) in [
        ("br", brotli(&plain)),
        ("gzip", gzip(&plain)),
        ("deflate", deflate(&plain)),
        ("zstd", zstd(&plain)),
    ] {
        a.reset_stats();
        let r = gw
            .client
            .post(gw.url("/echo"))
            .header("content-encoding", name)
            .body(wire.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}");
        let rec = a.stats().log.pop().unwrap();
        assert_eq!(rec.body_len as usize, plain.len(), "{name}");
        assert_eq!(rec.body_sha256, sha(&plain), "{name}: body changed");
        assert!(
            !rec.headers.iter().any(|(k, _)| k == "content-encoding"),
            "{name}"
        );
        let wire_bytes = gw
            .metric(
                "ballast_request_body_bytes_total",
                &[("encoding", name), ("stage", "wire")],
            )
            .await;
        assert_eq!(wire_bytes as usize, wire.len(), "{name}");
        let decoded = gw
            .metric(
                "ballast_request_body_bytes_total",
                &[("encoding", name), ("stage", "decoded")],
            )
            .await;
        assert_eq!(decoded as usize, plain.len(), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decompression_bombs_are_refused_with_memory_flat() {
    let a = sim("a").await;
    let gw = Gateway::one_pool(&[a.addr().to_string()], "").await;
    let pid = gw.pid();
    let before = rss_kib(pid);
    for (name, file) in [("br", "zeros-256MiB.br"), ("zstd", "zeros-256MiB.zst")] {
        let bomb = std::fs::read(format!(
            "{}/tests/fixtures/{file}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        assert!(bomb.len() < 10_000);
        let r = gw
            .client
            .post(gw.url("/echo"))
            .header("content-encoding", name)
            .body(bomb)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413, "{name}");
        let c = code(r).await;
        assert!(
            c == "body_too_large" || c == "decompression_ratio",
            "{name}: {c}"
        );
    }
    let after = rss_kib(pid);
    // 256 MiB twice over never materialised: growth stays around the
    // 16 MiB body limit.
    assert!(
        after < before + 48 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    assert_eq!(a.stats().requests, 0, "a bomb reached the backend");
    let decoded = gw
        .metric("ballast_request_body_bytes_total", &[("stage", "decoded")])
        .await;
    assert_eq!(decoded, 0.0, "a refused body was counted as decoded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_encodings_are_refused_clearly() {
    let a = sim("a").await;
    let gw = Gateway::one_pool(&[a.addr().to_string()], "").await;
    let plain = prompt(5000);
    let mut truncated = brotli(&plain);
    truncated.truncate(truncated.len() / 2);
    let mut trailing = zstd(&plain);
    trailing.extend_from_slice(b"garbage!");
    let mut gz_trailing = gzip(&plain);
    gz_trailing.extend_from_slice(b"garbage!");
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("br", truncated, 400, "bad_encoding"),
        ("zstd", trailing, 400, "bad_encoding"),
        ("gzip", gz_trailing, 400, "bad_encoding"),
        ("gzip", b"definitely not gzip".to_vec(), 400, "bad_encoding"),
        ("compress", plain.clone(), 415, "unsupported_encoding"),
        ("gzip, snappy", plain.clone(), 415, "unsupported_encoding"),
    ];
    for (enc, body, status, want) in cases {
        let r = gw
            .client
            .post(gw.url("/echo"))
            .header("content-encoding", enc)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{enc}");
        assert_eq!(code(r).await, want, "{enc}");
    }
    let r = gw
        .client
        .post(gw.url("/echo"))
        .header("content-encoding", "identity")
        .body(plain.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        a.stats().requests,
        1,
        "only the identity body reached the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decoded_size_limit_is_exact() {
    let a = sim("a").await;
    let gw = Gateway::start(&format!(
        "[limits]\nmax_request_body = \"64KiB\"\n{}{}",
        pool_toml("p", &[a.addr().to_string()], ""),
        route_toml("r", "/", "p", "")
    ))
    .await;
    for (len, status) in [(65536usize, 200u16), (65537, 413)] {
        let plain: Vec<u8> = (0..len).map(|i| b"abcdefgh"[i % 8]).collect();
        let r = gw
            .client
            .post(gw.url("/echo"))
            .header("content-encoding", "gzip")
            .body(gzip(&plain))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{len} decoded bytes");
    }
}

fn openai_route(extra: &str) -> String {
    format!("openai = true\n{extra}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_requests_are_validated_at_the_edge() {
    let a = sim("a").await;
    let gw = Gateway::start(&format!(
        "{}{}",
        pool_toml("p", &[a.addr().to_string()], ""),
        route_toml("chat", "/v1/", "p", &openai_route("max_tokens_limit = 50"))
    ))
    .await;
    let post = |body: &'static str| {
        gw.client
            .post(gw.url("/v1/chat/completions"))
            .body(body)
            .send()
    };

    let r = post(r#"{"model":"sim-model","messages":"hi"}"#)
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["param"], "messages");
    let r = post(r#"{"model":"sim-model","messages":[{"role":"user","content":"hi"}"#)
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "malformed JSON");
    let r = post(
        r#"{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"temperature":"hot"}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        a.stats().requests,
        0,
        "invalid requests took a backend slot"
    );

    // Valid: forwarded, with max_tokens clamped to the route's limit.
    let r = post(
        r#"{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"max_tokens":1000}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        v["usage"]["completion_tokens"], 50,
        "max_tokens was not clamped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_route_requests_and_fallbacks_answer_for_them() {
    let opts = |model: &str| SimOptions {
        model: model.to_owned(),
        ..SimOptions::default()
    };
    let hosted = sim_with("hosted", opts("deepseek-r1")).await;
    let local = sim_with("local", opts("deepseek-r1-int8")).await;
    let qwen = sim_with("qwen", opts("qwen")).await;
    let gw = Gateway::start(&format!(
        "{}{}{}{}{}",
        pool_toml("hosted", &[hosted.addr().to_string()], "max_fails = 0"),
        pool_toml("local", &[local.addr().to_string()], ""),
        pool_toml("qwen", &[qwen.addr().to_string()], ""),
        route_toml(
            "deepseek",
            "/v1/",
            "hosted",
            "models = [\"deepseek-r1\"]\nopenai = true\n\
             fallback = [{ pool = \"local\", model = \"deepseek-r1-int8\" }]\n\
             [route.retry]\nattempts = 2\nbackoff_base = \"10ms\"\nbackoff_max = \"50ms\""
        ),
        route_toml("qwen", "/v1/", "qwen", "models = [\"qwen\"]\nopenai = true"),
    ))
    .await;
    let chat = |model: &str| {
        let body =
            serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        gw.client
            .post(gw.url("/v1/chat/completions"))
            .json(&body)
            .send()
    };
    let answered_by = |r: serde_json::Value| r["model"].as_str().unwrap().to_owned();

    assert_eq!(
        answered_by(chat("deepseek-r1").await.unwrap().json().await.unwrap()),
        "deepseek-r1"
    );
    assert_eq!(
        answered_by(chat("qwen").await.unwrap().json().await.unwrap()),
        "qwen"
    );
    let r = chat("gpt-9").await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(code(r).await, "model_not_found");

    // The hosted pool answers 429 until attempts run out: the local
    // fallback serves, with the model rewritten, and says so.
    hosted.set_fault(Fault::new(FaultKind::Status {
        code: 429,
        retry_after: Some("0".into()),
    }));
    let r = chat("deepseek-r1").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(answered_by(r.json().await.unwrap()), "deepseek-r1-int8");
    assert_eq!(
        hosted.stats().requests,
        1 + 2,
        "one success earlier, then two 429s"
    );

    // Entirely down: straight to the fallback.
    hosted.shutdown();
    let r = chat("deepseek-r1").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(answered_by(r.json().await.unwrap()), "deepseek-r1-int8");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_answers_are_compressed_for_clients_that_accept_it() {
    let a = sim_with(
        "a",
        SimOptions {
            tokens: 2000,
            ..SimOptions::default()
        },
    )
    .await;
    let gw = Gateway::one_pool(&[a.addr().to_string()], "").await;
    let body = r#"{"model":"sim-model","messages":[]}"#;
    for (accept, want) in [
        ("gzip, deflate, br", Some("br")),
        ("gzip", Some("gzip")),
        ("identity", None),
    ] {
        let r = gw
            .client
            .post(gw.url("/v1/chat/completions"))
            .header("accept-encoding", accept)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let enc = r
            .headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(enc.as_deref(), want, "{accept}");
        if want.is_some() {
            assert!(r.headers()["vary"]
                .to_str()
                .unwrap()
                .eq_ignore_ascii_case("accept-encoding"));
        }
        let raw = r.bytes().await.unwrap().to_vec();
        let plain = match want {
            Some("br") => {
                let mut out = Vec::new();
                brotli::BrotliDecompress(&mut &raw[..], &mut out).unwrap();
                out
            }
            Some("gzip") => {
                let mut out = Vec::new();
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&raw[..]), &mut out)
                    .unwrap();
                out
            }
            _ => raw,
        };
        let v: serde_json::Value = serde_json::from_slice(&plain).unwrap();
        assert!(v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("tok0 "));
    }
    // A HEAD answer keeps the backend's head: there is no body to compress.
    let pad = "p".repeat(3000);
    for (method, want) in [
        (reqwest::Method::GET, Some("br")),
        (reqwest::Method::HEAD, None),
    ] {
        let r = gw
            .client
            .request(method.clone(), gw.url("/echo"))
            .header("accept-encoding", "br")
            .header("x-pad", &pad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let enc = r
            .headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(enc.as_deref(), want, "{method}");
    }
    // Event streams are never compressed.
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .header("accept-encoding", "br")
        .body(r#"{"model":"sim-model","messages":[],"stream":true,"max_tokens":3}"#)
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("content-encoding").is_none());
    let text = String::from_utf8(r.bytes().await.unwrap().to_vec()).unwrap();
    assert!(text.contains("data: [DONE]"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_stream_that_ends_without_a_finish_reason_is_not_a_complete_answer() {
    let a = sim("a").await;
    a.set_fault(Fault::new(FaultKind::EndMidStream { after_tokens: 5 }));
    let gw = Gateway::start(&format!(
        "{}{}",
        pool_toml("p", &[a.addr().to_string()], ""),
        route_toml("chat", "/v1/", "p", "openai = true")
    ))
    .await;
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .body(r#"{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":9}"#)
        .send()
        .await
        .unwrap();
    let mut s = r.bytes_stream();
    let mut text = String::new();
    let mut clean = true;
    while let Some(item) = s.next().await {
        match item {
            Ok(b) => text.push_str(&String::from_utf8_lossy(&b)),
            Err(_) => clean = false,
        }
    }
    assert!(!clean, "the stream ended as if complete");
    assert_eq!(text.matches("chat.completion.chunk").count(), 5);
    assert!(text.contains("upstream_stream_interrupted"), "{text}");
    gw.wait_metric(
        "ballast_stream_aborts_total",
        &[("reason", "missing_done")],
        1.0,
    )
    .await;
}
