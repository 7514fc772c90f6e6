//! A prompt too long for a model moves, once, to the fallback declared
//! for it (`on = ["context_length"]`); every other 400 reaches the client
//! as the backend said it.

use crate::harness::*;
use ballast::sim::SimOptions;

fn prompt(words: usize) -> String {
    let text = vec!["word"; words].join(" ");
    format!(r#"{{"model":"small","messages":[{{"role":"user","content":"{text}"}}]}}"#)
}

async fn post(gw: &Gateway, body: String) -> (u16, serde_json::Value) {
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_too_long_moves_once_to_a_longer_context() {
    let small = sim_with(
        "small",
        SimOptions {
            max_context: 8,
            ..SimOptions::default()
        },
    )
    .await;
    let long = sim_with(
        "long",
        SimOptions {
            max_context: 20,
            ..SimOptions::default()
        },
    )
    .await;
    let spare = sim("spare").await;
    let gw = Gateway::start(&format!(
        "{}{}{}{}",
        pool_toml("small", &[small.addr().to_string()], ""),
        pool_toml("long", &[long.addr().to_string()], ""),
        pool_toml("spare", &[spare.addr().to_string()], ""),
        route_toml(
            "chat",
            "/v1/",
            "small",
            "openai = true\nfallback = [\n  { pool = \"spare\" },\n  { pool = \"long\", model = \"long-model\", on = [\"context_length\"] },\n]"
        )
    ))
    .await;

    // Fits: served where it was sent.
    let (status, _) = post(&gw, prompt(5)).await;
    assert_eq!(status, 200);
    assert_eq!(small.stats().requests, 1);

    // Too long for the small model: the long one answers, asked for by name.
    let (status, body) = post(&gw, prompt(12)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(small.stats().requests, 2);
    let rec = long.stats().log;
    assert_eq!(rec.len(), 1);
    let sent: serde_json::Value = serde_json::from_str(&rec[0].body_text).unwrap();
    assert_eq!(sent["model"], "long-model");
    assert_eq!(
        spare.stats().requests,
        0,
        "a context refusal is not unavailability"
    );
    gw.wait_metric("ballast_context_fallbacks_total", &[("route", "chat")], 1.0)
        .await;

    // Too long for both: it moved once, and the client hears the longer
    // model's refusal, unchanged.
    let (status, body) = post(&gw, prompt(30)).await;
    assert_eq!(status, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("maximum context length is 20"),
        "{body}"
    );
    assert_eq!(long.stats().requests, 2);
    assert_eq!(small.stats().requests, 3);

    // A content-policy refusal never moves.
    let (status, body) = post(
        &gw,
        r#"{"model":"small","messages":[{"role":"user","content":"sim:policy"}]}"#.to_owned(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "content_policy_violation");
    assert_eq!(long.stats().requests, 2);
    assert_eq!(spare.stats().requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_context_fallback_the_refusal_reaches_the_client() {
    let small = sim_with(
        "small",
        SimOptions {
            max_context: 8,
            ..SimOptions::default()
        },
    )
    .await;
    let spare = sim("spare").await;
    let gw = Gateway::start(&format!(
        "{}{}{}",
        pool_toml("small", &[small.addr().to_string()], ""),
        pool_toml("spare", &[spare.addr().to_string()], ""),
        route_toml(
            "chat",
            "/v1/",
            "small",
            "openai = true\nfallback = [{ pool = \"spare\" }]"
        )
    ))
    .await;
    let (status, body) = post(&gw, prompt(12)).await;
    assert_eq!(status, 400);
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("maximum context length is 8"));
    assert_eq!(spare.stats().requests, 0);

    // A context fallback that cannot serve leaves the client with the
    // refusal it can act on, not an "unavailable".
    let down = dead_addr();
    let gw = Gateway::start(&format!(
        "{}{}{}",
        pool_toml("small", &[small.addr().to_string()], ""),
        pool_toml("long", &[down], ""),
        route_toml(
            "chat",
            "/v1/",
            "small",
            "openai = true\nfallback = [{ pool = \"long\", on = [\"context_length\"] }]"
        )
    ))
    .await;
    let (status, body) = post(&gw, prompt(12)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("maximum context length is 8"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_moved_for_its_length_frees_its_first_servers_slot() {
    // The small server takes one request at a time; a long prompt moved to
    // a slow long-context server must not keep that slot.
    let small = sim_with(
        "small",
        SimOptions {
            max_context: 8,
            ..SimOptions::default()
        },
    )
    .await;
    let long = sim_with(
        "long",
        SimOptions {
            token_interval: std::time::Duration::from_millis(200),
            tokens: 10,
            ..SimOptions::default()
        },
    )
    .await;
    let gw = Gateway::start(&format!(
        "{}{}{}",
        pool_toml(
            "small",
            &[small.addr().to_string()],
            "max_conns = 1\n[pool.queue]\nmax_depth = 10\nmax_wait = \"100ms\""
        ),
        pool_toml("long", &[long.addr().to_string()], ""),
        route_toml(
            "chat",
            "/v1/",
            "small",
            "openai = true\nfallback = [{ pool = \"long\", on = [\"context_length\"] }]"
        )
    ))
    .await;
    let slow = {
        let client = gw.client.clone();
        let url = gw.url("/v1/chat/completions");
        let body = prompt(12).replace("}]}", "}],\"stream\":true}");
        tokio::spawn(async move {
            let r = client.post(url).body(body).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    wait_until("the long server streams", || long.stats().in_flight == 1).await;
    let (status, body) = post(&gw, prompt(3)).await;
    assert_eq!(status, 200, "the small server's slot was held: {body}");
    let (status, text) = slow.await.unwrap();
    assert_eq!(status, 200);
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
}
