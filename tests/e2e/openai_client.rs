//! The official `openai` Python client (installed by scripts/test) against
//! the gateway: a whole answer works, a truncated stream raises.

use crate::harness::*;
use ballast::sim::{Fault, FaultKind, SimOptions};
use std::process::Command;
use std::time::Duration;

async fn run(gw: &Gateway, scenario: &str) -> serde_json::Value {
    run_env(gw, scenario, &[]).await
}

/// The client's `scenario` against `gw`, with these environment variables
/// (`BALLAST_TEST_KEY`, `BALLAST_TEST_CA`): the one JSON line it prints.
pub async fn run_env(gw: &Gateway, scenario: &str, env: &[(&str, &str)]) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/openai_client.py");
    let base = gw.url("/v1");
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let out = tokio::task::spawn_blocking({
        let scenario = scenario.to_string();
        move || {
            Command::new("python3")
                .arg(script)
                .arg(base)
                .arg(scenario)
                .envs(env)
                .output()
        }
    })
    .await
    .unwrap()
    .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client failed (is the openai package installed? scripts/test installs it):\n{}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("one JSON line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_client_gets_whole_answers_and_raises_on_a_cut_stream() {
    let a = sim_with(
        "a",
        SimOptions {
            tokens: 60,
            token_interval: Duration::from_millis(2),
            ..SimOptions::default()
        },
    )
    .await;
    let gw = Gateway::start(&format!(
        "{}{}",
        pool_toml("p", &[a.addr().to_string()], "max_fails = 0"),
        route_toml("chat", "/v1/", "p", "openai = true")
    ))
    .await;

    let chat = run(&gw, "chat").await;
    assert_eq!(chat["ok"], true, "{chat}");
    assert!(chat["content"].as_str().unwrap().starts_with("tok0 tok1"));

    let stream = run(&gw, "stream").await;
    assert_eq!(stream["ok"], true, "{stream}");
    assert_eq!(stream["chunks"], 60);

    let bad = run(&gw, "malformed").await;
    assert_eq!(bad["ok"], false, "{bad}");
    assert_eq!(bad["error_type"], "BadRequestError", "{bad}");
    assert_eq!(bad["status"], 400, "{bad}");
    assert_eq!(bad["param"], "messages", "{bad}");
    assert_eq!(
        a.stats().requests,
        2,
        "the malformed request reached the backend"
    );

    a.set_fault(Fault::new(FaultKind::CloseMidStream { after_tokens: 40 }));
    let cut = run(&gw, "stream").await;
    assert_eq!(cut["ok"], false, "a truncated stream was accepted: {cut}");
    assert_eq!(cut["error_type"], "APIError", "{cut}");
    assert!(
        cut["message"].as_str().unwrap().contains("mid-stream"),
        "{cut}"
    );
}
