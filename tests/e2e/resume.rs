//! Cut streams resumed on another server (`[route.resume]`,
//! `pool.continuation`): the client reads one whole answer, or, where a
//! resume is not safe or not possible, the interruption error event about
//! the original failure.

use crate::harness::*;
use ballast::sim::{Fault, FaultKind, SimOptions, SimServer};
use std::time::Duration;

/// What a client parsing the event stream itself saw.
#[derive(Debug, Default)]
struct Seen {
    text: String,
    ids: Vec<String>,
    created: Vec<i64>,
    models: Vec<String>,
    finish: Vec<String>,
    usage: Vec<serde_json::Value>,
    roles: usize,
    done: usize,
    errors: Vec<serde_json::Value>,
    /// The body ended cleanly (not aborted).
    clean: bool,
    raw: String,
}

fn parse(raw: &str, clean: bool) -> Seen {
    let mut seen = Seen {
        clean,
        raw: raw.to_owned(),
        ..Seen::default()
    };
    for event in raw.split("\n\n") {
        let Some(data) = event.trim().strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            seen.done += 1;
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(data).expect("each event is JSON");
        if v.get("error").is_some() {
            seen.errors.push(v["error"].clone());
            continue;
        }
        seen.ids.push(v["id"].as_str().unwrap().to_owned());
        seen.created.push(v["created"].as_i64().unwrap());
        seen.models.push(v["model"].as_str().unwrap().to_owned());
        if !v["usage"].is_null() {
            seen.usage.push(v["usage"].clone());
        }
        for c in v["choices"].as_array().unwrap() {
            let d = &c["delta"];
            if d.get("role").is_some() {
                seen.roles += 1;
            }
            if let Some(t) = d["content"].as_str() {
                seen.text.push_str(t);
            }
            if let Some(f) = c["finish_reason"].as_str() {
                seen.finish.push(f.to_owned());
            }
        }
    }
    seen
}

async fn stream(gw: &Gateway, body: &str) -> Seen {
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (raw, clean) = read_to_end(r.bytes_stream()).await;
    parse(&raw, clean)
}

fn whole(n: u32) -> String {
    (0..n).map(|i| format!("tok{i} ")).collect()
}

async fn fast_sim(name: &str, opts: SimOptions) -> SimServer {
    sim_with(
        name,
        SimOptions {
            token_interval: Duration::from_millis(5),
            ..opts
        },
    )
    .await
}

fn distinct<T: PartialEq + Clone>(items: &[T]) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for i in items {
        if !out.contains(i) {
            out.push(i.clone());
        }
    }
    out
}

/// One answer, as if uninterrupted: the whole text once, one id, one
/// `created`, one model, one finish reason, then one `[DONE]`.
fn assert_one_whole_answer(seen: &Seen, text: &str, finish: &str) {
    assert!(seen.clean, "the stream was aborted:\n{}", seen.raw);
    assert!(seen.errors.is_empty(), "{:?}", seen.errors);
    assert_eq!(seen.text, text, "\n{}", seen.raw);
    assert_eq!(distinct(&seen.ids).len(), 1, "{:?}", seen.ids);
    assert_eq!(distinct(&seen.created).len(), 1, "{:?}", seen.created);
    assert_eq!(distinct(&seen.models), vec!["sim-model".to_owned()]);
    assert_eq!(seen.finish, vec![finish.to_owned()]);
    assert_eq!(seen.roles, 1, "the role is said once");
    assert_eq!(seen.done, 1);
    assert!(seen.raw.trim_end().ends_with("data: [DONE]"));
}

const RESUME: &str = "openai = true\n[route.resume]\nenabled = true\nmax_resumes = 2";

const ASK: &str = r#"{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_twice_reads_as_one_whole_answer() {
    // Whichever server takes the request cuts it after 5 tokens, the other
    // cuts the continuation after 5 more; the first, now healthy,
    // finishes it.
    let a = fast_sim("a", SimOptions::default()).await;
    let b = fast_sim("b", SimOptions::default()).await;
    for s in [&a, &b] {
        s.set_fault(Fault::new(FaultKind::CloseMidStream { after_tokens: 5 }).times(1));
    }
    let gw = Gateway::start(&format!(
        "{}{}",
        pool_toml(
            "p",
            &[a.addr().to_string(), b.addr().to_string()],
            "continuation = \"vllm\""
        ),
        route_toml("chat", "/v1/", "p", RESUME)
    ))
    .await;
    let seen = stream(&gw, ASK).await;
    assert_one_whole_answer(&seen, &whole(16), "stop");
    // Usage is the whole answer's: the prompt ("hi") and 16 tokens.
    assert_eq!(seen.usage.len(), 1, "{:?}", seen.usage);
    assert_eq!(seen.usage[0]["prompt_tokens"], 1);
    assert_eq!(seen.usage[0]["completion_tokens"], 16);
    assert_eq!(seen.usage[0]["total_tokens"], 17);

    // The backends saw the request, then two continuations of what had
    // been sent, each asking for the rest.
    let mut log: Vec<_> = a.stats().log.into_iter().chain(b.stats().log).collect();
    log.sort_by_key(|r| r.at_ms);
    assert_eq!(log.len(), 3, "{log:?}");
    let bodies: Vec<serde_json::Value> = log
        .iter()
        .map(|r| serde_json::from_str(&r.body_text).unwrap())
        .collect();
    assert!(bodies[0].get("continue_final_message").is_none());
    assert_eq!(bodies[0]["messages"].as_array().unwrap().len(), 1);
    for (body, sent) in bodies[1..].iter().zip([5, 10]) {
        assert_eq!(body["continue_final_message"], true);
        assert_eq!(body["add_generation_prompt"], false);
        let last = &body["messages"][1];
        assert_eq!(last["role"], "assistant");
        assert_eq!(last["content"], whole(sent));
    }
    gw.wait_metric(
        "ballast_stream_resumes_total",
        &[("pool", "p"), ("result", "resumed")],
        2.0,
    )
    .await;
    assert!(
        gw.metric(
            "ballast_stream_aborts_total",
            &[("reason", "upstream_broken")]
        )
        .await
            == 0.0
    );
    let log = gw.log();
    assert!(log.contains("resumed=p/"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_moves_to_a_fallback_in_its_dialect() {
    // The only server of the first pool goes silent after 5 tokens; the
    // fallback speaks DeepSeek's prefix completion.
    let a = fast_sim("a", SimOptions::default()).await;
    a.set_fault(Fault::new(FaultKind::StallMidStream { after_tokens: 5 }));
    let b = fast_sim("b", SimOptions::default()).await;
    let gw = Gateway::start(&format!(
        "{}{}{}",
        pool_toml("p", &[a.addr().to_string()], "continuation = \"vllm\""),
        pool_toml("ds", &[b.addr().to_string()], "continuation = \"deepseek\""),
        route_toml(
            "chat",
            "/v1/",
            "p",
            &format!("fallback = [{{ pool = \"ds\" }}]\n{RESUME}\n[route.timeouts]\nstream_idle = \"300ms\"")
        )
    ))
    .await;
    let body = r#"{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":12}"#;
    let seen = stream(&gw, body).await;
    assert_one_whole_answer(&seen, &whole(12), "length");
    let rec = b.stats().log;
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].path, "/beta/chat/completions");
    let sent: serde_json::Value = serde_json::from_str(&rec[0].body_text).unwrap();
    assert_eq!(
        sent["messages"][1],
        serde_json::json!({"role": "assistant", "content": whole(5), "prefix": true})
    );
    // The limit is the whole answer's: 12 asked, 5 sent.
    assert_eq!(sent["max_tokens"], 7);
    assert_eq!(
        a.stats().requests,
        1,
        "the stalled server was not asked again"
    );
    gw.wait_metric(
        "ballast_stream_resumes_total",
        &[("pool", "p"), ("result", "resumed")],
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_continuation_never_masks_the_original_failure() {
    // The first pool declares no continuation; the fallback's server
    // refuses partial assistant messages with a 400.
    let a = fast_sim("a", SimOptions::default()).await;
    a.set_fault(Fault::new(FaultKind::CloseMidStream { after_tokens: 5 }));
    let b = fast_sim(
        "b",
        SimOptions {
            no_continuation: true,
            ..SimOptions::default()
        },
    )
    .await;
    let gw = Gateway::start(&format!(
        "{}{}{}",
        pool_toml("p", &[a.addr().to_string()], "max_fails = 0"),
        pool_toml("v", &[b.addr().to_string()], "continuation = \"vllm\""),
        route_toml(
            "chat",
            "/v1/",
            "p",
            &format!("fallback = [{{ pool = \"v\" }}]\n{RESUME}")
        )
    ))
    .await;
    let seen = stream(&gw, ASK).await;
    assert!(!seen.clean, "a cut answer ended as if whole");
    assert_eq!(seen.text, whole(5));
    assert_eq!(seen.done, 0);
    assert_eq!(seen.errors.len(), 1, "{}", seen.raw);
    assert_eq!(seen.errors[0]["code"], "upstream_stream_interrupted");
    assert!(
        !seen.raw.contains("does not continue"),
        "the 400 leaked: {}",
        seen.raw
    );
    assert_eq!(
        a.stats().requests,
        1,
        "a pool without a dialect was asked to continue"
    );
    assert_eq!(b.stats().requests, 1);
    gw.wait_metric(
        "ballast_stream_resumes_total",
        &[("pool", "p"), ("result", "refused")],
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_stop_at_their_limit_and_at_the_deadline() {
    // Every server cuts every stream: one resume, then the error event.
    let a = fast_sim("a", SimOptions::default()).await;
    let b = fast_sim("b", SimOptions::default()).await;
    for s in [&a, &b] {
        s.set_fault(Fault::new(FaultKind::CloseMidStream { after_tokens: 3 }));
    }
    let gw = Gateway::start(&format!(
        "{}{}",
        pool_toml(
            "p",
            &[a.addr().to_string(), b.addr().to_string()],
            "continuation = \"vllm\"\nmax_fails = 0"
        ),
        route_toml(
            "chat",
            "/v1/",
            "p",
            "openai = true\n[route.resume]\nenabled = true\nmax_resumes = 1"
        )
    ))
    .await;
    let seen = stream(&gw, ASK).await;
    assert!(!seen.clean);
    assert_eq!(seen.text, whole(6), "one resume of 3 tokens more");
    assert_eq!(seen.errors.len(), 1);
    assert_eq!(a.stats().requests + b.stats().requests, 2);
    gw.wait_metric(
        "ballast_stream_resumes_total",
        &[("pool", "p"), ("result", "limit")],
        1.0,
    )
    .await;

    // A stream cut after the route's deadline is not resumed.
    let slow = sim_with(
        "slow",
        SimOptions {
            token_interval: Duration::from_millis(100),
            ..SimOptions::default()
        },
    )
    .await;
    slow.set_fault(Fault::new(FaultKind::CloseMidStream { after_tokens: 5 }));
    let other = fast_sim("other", SimOptions::default()).await;
    let gw = Gateway::start(&format!(
        "{}{}{}",
        pool_toml("p", &[slow.addr().to_string()], "continuation = \"vllm\""),
        pool_toml("q", &[other.addr().to_string()], "continuation = \"vllm\""),
        route_toml(
            "chat",
            "/v1/",
            "p",
            &format!(
                "fallback = [{{ pool = \"q\" }}]\n{RESUME}\n[route.timeouts]\ntotal = \"300ms\""
            )
        )
    ))
    .await;
    let seen = stream(&gw, ASK).await;
    assert!(!seen.clean);
    assert_eq!(seen.text, whole(5));
    assert_eq!(other.stats().requests, 0);
    gw.wait_metric(
        "ballast_stream_resumes_total",
        &[("pool", "p"), ("result", "deadline")],
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_call_cut_mid_call_is_not_resumed() {
    let a = fast_sim("a", SimOptions::default()).await;
    a.set_fault(Fault::new(FaultKind::CloseMidStream { after_tokens: 4 }));
    let b = fast_sim("b", SimOptions::default()).await;
    let gw = Gateway::start(&format!(
        "{}{}{}",
        pool_toml("p", &[a.addr().to_string()], "continuation = \"vllm\""),
        pool_toml("q", &[b.addr().to_string()], "continuation = \"vllm\""),
        route_toml(
            "chat",
            "/v1/",
            "p",
            &format!("fallback = [{{ pool = \"q\" }}]\n{RESUME}")
        )
    ))
    .await;
    let body = r#"{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"stream":true,"tools":[{"type":"function","function":{"name":"lookup","parameters":{}}}]}"#;
    let seen = stream(&gw, body).await;
    assert!(!seen.clean);
    assert_eq!(seen.errors.len(), 1);
    assert_eq!(seen.raw.matches("tool_calls").count(), 4, "{}", seen.raw);
    assert_eq!(b.stats().requests, 0);
    gw.wait_metric(
        "ballast_stream_resumes_total",
        &[("pool", "p"), ("result", "tool_call")],
        1.0,
    )
    .await;

    // Two choices are never resumed either (the request says so).
    let body =
        r#"{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"stream":true,"n":2}"#;
    let seen = stream(&gw, body).await;
    assert!(!seen.clean);
    assert_eq!(b.stats().requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_ends_cleanly_is_judged_by_its_finish_reason() {
    // Whole but for its [DONE]: delivered whole, [DONE] added, usage kept.
    let a = fast_sim("a", SimOptions::default()).await;
    a.set_fault(Fault::new(FaultKind::EndWithoutDone));
    let gw = Gateway::start(&format!(
        "{}{}",
        pool_toml("p", &[a.addr().to_string()], ""),
        route_toml("chat", "/v1/", "p", "openai = true")
    ))
    .await;
    let seen = stream(&gw, ASK).await;
    assert_one_whole_answer(&seen, &whole(16), "stop");
    assert_eq!(seen.usage.len(), 1);
    assert_eq!(seen.usage[0]["completion_tokens"], 16);

    // Ended cleanly with no finish reason: truncated, resumed where the
    // route allows it.
    let b = fast_sim("b", SimOptions::default()).await;
    b.set_fault(Fault::new(FaultKind::EndMidStream { after_tokens: 7 }).times(1));
    let gw = Gateway::start(&format!(
        "{}{}",
        pool_toml("p", &[b.addr().to_string()], "continuation = \"vllm\""),
        route_toml("chat", "/v1/", "p", RESUME)
    ))
    .await;
    let seen = stream(&gw, ASK).await;
    assert_one_whole_answer(&seen, &whole(16), "stop");
    assert_eq!(
        b.stats().requests,
        2,
        "the one server continued its own cut answer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_client_reads_a_resumed_stream_as_one() {
    let a = fast_sim(
        "a",
        SimOptions {
            tokens: 60,
            ..SimOptions::default()
        },
    )
    .await;
    a.set_fault(Fault::new(FaultKind::CloseMidStream { after_tokens: 20 }));
    let b = fast_sim(
        "b",
        SimOptions {
            tokens: 60,
            ..SimOptions::default()
        },
    )
    .await;
    let gw = Gateway::start(&format!(
        "{}{}{}",
        pool_toml("p", &[a.addr().to_string()], "continuation = \"vllm\""),
        pool_toml("q", &[b.addr().to_string()], "continuation = \"sglang\""),
        route_toml(
            "chat",
            "/v1/",
            "p",
            &format!("fallback = [{{ pool = \"q\" }}]\n{RESUME}")
        )
    ))
    .await;
    let out = crate::openai_client::run_env(&gw, "stream", &[]).await;
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(out["content"], whole(60));
    assert_eq!(out["chunks"], 60);
    assert_eq!(out["ids"].as_array().unwrap().len(), 1, "{out}");
    assert_eq!(out["finish"], serde_json::json!(["stop"]), "{out}");
    assert_eq!(b.stats().requests, 1);
}
