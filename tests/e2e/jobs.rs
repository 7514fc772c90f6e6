//! Asynchronous jobs (`Prefer: respond-async`, `[jobs]`, `[route.jobs]`):
//! accepted durably with 202, run with spare capacity only, polled at
//! `/v1/jobs/{id}`, cancelled, expired, forgotten, and never lost to a
//! crash.

use crate::harness::*;
use ballast::sim::SimOptions;
use std::time::Duration;

const ASK: &str =
    r#"{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"max_tokens":5}"#;

fn config(dir: &std::path::Path, pool: &[String], pool_extra: &str, jobs: &str) -> String {
    format!(
        "[jobs]\ndir = \"{}\"\n{}{}",
        dir.display(),
        pool_toml("p", pool, pool_extra),
        route_toml(
            "chat",
            "/v1/",
            "p",
            &format!("openai = true\n[route.jobs]\nenabled = true\n{jobs}")
        )
    )
}

async fn submit(gw: &Gateway, body: &str) -> String {
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .header("prefer", "respond-async")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(r.headers()["preference-applied"], "respond-async");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], "queued");
    let id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/v1/jobs/{id}"));
    id
}

async fn job(gw: &Gateway, id: &str) -> (u16, serde_json::Value) {
    let r = gw
        .client
        .get(gw.url(&format!("/v1/jobs/{id}")))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn wait_status(gw: &Gateway, id: &str, status: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (code, v) = job(gw, id).await;
        assert_eq!(code, 200, "{v}");
        if v["status"] == status {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job never {status}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_accepted_then_answered_like_the_request_itself() {
    let a = sim("a").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&config(dir.path(), &[a.addr().to_string()], "", "")).await;
    let id = submit(&gw, ASK).await;
    let done = wait_status(&gw, &id, "succeeded").await;
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["started"], 1);
    assert_eq!(done["response"]["status"], 200);
    assert_eq!(
        done["response"]["headers"]["content-type"],
        "application/json"
    );
    let sync: serde_json::Value = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .body(ASK)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let body = &done["response"]["body"];
    assert_eq!(body["choices"], sync["choices"]);
    assert_eq!(body["usage"], sync["usage"]);

    // A streaming request is run as `stream: false`: one whole answer.
    let stream = r#"{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"max_tokens":5,"stream":true,"stream_options":{"include_usage":true}}"#;
    let id = submit(&gw, stream).await;
    let done = wait_status(&gw, &id, "succeeded").await;
    assert_eq!(done["response"]["body"]["choices"], sync["choices"]);
    let sent: serde_json::Value =
        serde_json::from_str(&a.stats().log.last().unwrap().body_text).unwrap();
    assert_eq!(sent["stream"], false);
    assert!(sent["stream_options"].is_null());
    gw.wait_metric(
        "ballast_jobs_total",
        &[("route", "chat"), ("result", "succeeded")],
        2.0,
    )
    .await;

    // Bad input: an unknown or malformed id, an invalid body, a bad method.
    for id in [
        "job_00000000000000000000000000000000",
        "nope",
        "job_zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
    ] {
        let (code, v) = job(&gw, id).await;
        assert_eq!(code, 404, "{v}");
        assert_eq!(v["error"]["code"], "job_not_found");
    }
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .header("prefer", "respond-async")
        .body(r#"{"model":"sim-model","messages":"hi"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "validated before it is stored");
    let r = gw
        .client
        .put(gw.url(&format!("/v1/jobs/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(a.stats().requests, 3, "nothing else reached the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_wait_for_slots_interactive_requests_leave_free() {
    // One slot; an interactive stream holds it. The job starts only once
    // the stream is over, and never makes an interactive request wait.
    let a = sim_with(
        "a",
        SimOptions {
            token_interval: Duration::from_millis(50),
            ..SimOptions::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&config(
        dir.path(),
        &[a.addr().to_string()],
        "max_conns = 1",
        "",
    ))
    .await;
    let interactive = {
        let client = gw.client.clone();
        let url = gw.url("/v1/chat/completions");
        tokio::spawn(async move {
            let r = client
                .post(url)
                .body(r#"{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"max_tokens":10,"stream":true}"#)
                .send()
                .await
                .unwrap();
            r.text().await.unwrap()
        })
    };
    wait_until("the stream holds the slot", || a.stats().in_flight == 1).await;
    let id = submit(&gw, ASK).await;
    let (_, v) = job(&gw, &id).await;
    assert_eq!(v["status"], "queued", "{v}");
    let text = interactive.await.unwrap();
    assert!(text.contains("[DONE]"));
    let done = wait_status(&gw, &id, "succeeded").await;
    let log = a.stats().log;
    assert_eq!(log.len(), 2);
    assert!(
        log[1].at_ms >= log[0].at_ms + 450,
        "the job ran beside the stream: {log:?}"
    );
    assert_eq!(done["attempts"], 1, "waiting for a slot is not an attempt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_cancelled_expire_are_forgotten_and_are_bounded() {
    // The only server is down (health checks): jobs stay queued, as
    // waiting for capacity is not an attempt.
    let dead = dead_addr();
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&format!(
        "[jobs]\ndir = \"{}\"\nmax_queued = 2\n{}{}",
        dir.path().display(),
        pool_toml(
            "p",
            std::slice::from_ref(&dead),
            "[pool.health]\npath = \"/health\"\ninterval = \"100ms\"\nfall = 1"
        ),
        route_toml(
            "chat",
            "/v1/",
            "p",
            "openai = true\n[route.jobs]\nenabled = true\nttl = \"1500ms\"\nretention = \"1s\""
        )
    ))
    .await;
    gw.wait_server(&dead, "down", |s| s["state"] == "down")
        .await;
    let cancel = submit(&gw, ASK).await;
    let expire = submit(&gw, ASK).await;
    // Full: 503 with Retry-After, nothing stored.
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .header("prefer", "respond-async")
        .body(ASK)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "jobs_full");

    let r = gw
        .client
        .delete(gw.url(&format!("/v1/jobs/{cancel}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], "cancelled");

    let v = wait_status(&gw, &expire, "failed").await;
    assert_eq!(v["error"]["code"], "job_expired");
    assert_eq!(v["started"], 0);

    // Past their retention, finished jobs are gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while job(&gw, &cancel).await.0 != 404 || job(&gw, &expire).await.0 != 404 {
        assert!(
            std::time::Instant::now() < deadline,
            "jobs were kept past their retention"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.wait_metric(
        "ballast_jobs_total",
        &[("route", "chat"), ("result", "cancelled")],
        1.0,
    )
    .await;
    gw.wait_metric(
        "ballast_jobs_total",
        &[("route", "chat"), ("result", "expired")],
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_accepted_job_is_lost_when_the_gateway_is_killed() {
    // Slow answers, one worker: when the gateway is killed, one job is
    // running and the rest are queued.
    let a = sim_with(
        "a",
        SimOptions {
            token_interval: Duration::from_millis(40),
            ..SimOptions::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "[jobs]\ndir = \"{}\"\nworkers = 1\n{}{}",
        dir.path().display(),
        pool_toml("p", &[a.addr().to_string()], ""),
        route_toml(
            "chat",
            "/v1/",
            "p",
            "openai = true\n[route.jobs]\nenabled = true"
        )
    );
    let mut gw = Gateway::start(&body).await;
    a.set_fault(latency(Duration::from_millis(400)));
    let slow = r#"{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"max_tokens":10,"stream":true}"#;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(submit(&gw, slow).await);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while a.stats().in_flight != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "no job ran: {:?}\n{}",
            job(&gw, &ids[0]).await,
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gw.signal(9);
    gw.wait_exit(Duration::from_secs(10)).await.expect("killed");

    let gw = Gateway::start(&body).await;
    let mut contents = Vec::new();
    let mut restarted = 0;
    for id in &ids {
        let v = wait_status(&gw, id, "succeeded").await;
        contents.push(v["response"]["body"]["choices"][0]["message"]["content"].clone());
        match v["started"].as_u64().unwrap() {
            1 => {}
            2 => restarted += 1,
            n => panic!("started {n} times: {v}"),
        }
    }
    assert_eq!(contents.len(), 6);
    assert!(contents.iter().all(|c| c == &contents[0]));
    assert_eq!(
        restarted, 1,
        "the job running at the kill says it started twice"
    );
    // Every job reached the backend; the interrupted one twice.
    assert_eq!(a.stats().requests, 7);
}
