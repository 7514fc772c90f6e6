//! Every spelling of a path is judged, and forwarded, in one canonical
//! form: percent-escapes, dot segments, case, trailing slashes and
//! `;params` cannot slip a request past routing or OpenAI validation.

use crate::harness::*;

fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn code(reply: &RawReply) -> String {
    let v: serde_json::Value = serde_json::from_str(&reply.body())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", reply.text()));
    v["error"]["code"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spelling_escapes_routing_or_validation() {
    let a = sim("a").await;
    let gw = Gateway::start(&format!(
        "{}{}",
        pool_toml("p", &[a.addr().to_string()], ""),
        route_toml("chat", "/v1/", "p", "openai = true\nmax_tokens_limit = 16")
    ))
    .await;
    let invalid = r#"{"model":"sim-model","messages":"not a list"}"#;
    let greedy =
        r#"{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"max_tokens":99999}"#;

    // Spellings of chat completions: each is validated...
    let spellings = [
        "/v1/chat/%63ompletions",
        "/v1/chat/completions/",
        "/v1/chat/completions;x=1",
        "/v1/Chat/Completions",
        "/v1/./chat//completions",
        "/v1/x/../chat/completions",
        "/v1/chat/%2e/completions",
    ];
    for path in spellings {
        let reply = raw_exchange(gw.addr, &post(path, invalid)).await;
        assert_eq!(reply.status(), Some(400), "{path}: {}", reply.text());
        assert_eq!(code(&reply), "invalid_request", "{path}");
    }
    assert_eq!(a.stats().requests, 0, "an invalid body reached the backend");

    // ...and normalised exactly as the plain spelling is (max_tokens
    // clamped), and the backend gets the canonical path.
    let reply = raw_exchange(gw.addr, &post("/v1/chat/completions", greedy)).await;
    let usage: serde_json::Value = serde_json::from_str(&reply.body()).unwrap();
    assert_eq!(
        usage["usage"]["completion_tokens"], 16,
        "max_tokens not clamped"
    );
    let normalised = a.stats().log[0].body_sha256.clone();
    for path in spellings {
        a.reset_stats();
        let reply = raw_exchange(gw.addr, &post(path, greedy)).await;
        assert_eq!(reply.status(), Some(200), "{path}: {}", reply.text());
        let seen = a.stats().log;
        assert_eq!(seen.len(), 1);
        let canonical = ballast::path::canonical(path).unwrap().into_owned();
        assert_eq!(seen[0].path, canonical, "{path}");
        assert_eq!(seen[0].body_sha256, normalised, "{path}: not normalised");
    }

    // Climbing out of the route's prefix lands outside it: no route.
    a.reset_stats();
    for path in [
        "/v1/../admin",
        "/v1/%2e%2e/admin",
        "/v1/%2E%2E/admin",
        "/V1/chat/completions",
    ] {
        let reply = raw_exchange(gw.addr, &post(path, greedy)).await;
        assert_eq!(reply.status(), Some(404), "{path}: {}", reply.text());
        assert_eq!(code(&reply), "route_not_found", "{path}");
    }
    // Separators that cannot be passed on safely, and a climb above the root.
    for path in [
        "/v1%2fchat/completions",
        "/v1/chat%5Ccompletions",
        "/v1/%00",
        "/v1/../../x",
        "/v1/%zz",
    ] {
        let reply = raw_exchange(gw.addr, &post(path, greedy)).await;
        assert_eq!(reply.status(), Some(400), "{path}: {}", reply.text());
        assert_eq!(code(&reply), "bad_path", "{path}");
        assert!(reply.closed);
    }
    assert_eq!(a.stats().requests, 0, "a refused path reached the backend");
}
