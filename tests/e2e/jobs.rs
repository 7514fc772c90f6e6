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
    // Over several runner rounds (100 ms each) the job stays queued and out
    // of the pool's queue: it waits for a free slot, not in line for one.
    let watch_until = std::time::Instant::now() + Duration::from_millis(300);
    while std::time::Instant::now() < watch_until {
        let (_, v) = job(&gw, &id).await;
        assert_eq!(v["status"], "queued", "{v}");
        assert_eq!(
            gw.metric("ballast_queue_depth", &[("pool", "p")]).await,
            0.0
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // An interactive request arriving now waits in the pool's queue, and
    // gets the slot before the job that was submitted earlier.
    let second = {
        let client = gw.client.clone();
        let url = gw.url("/v1/chat/completions");
        tokio::spawn(async move {
            let body = ASK.replace("\"max_tokens\":5", "\"max_tokens\":3");
            client
                .post(url)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    gw.wait_metric("ballast_queue_depth", &[("pool", "p")], 1.0)
        .await;
    let text = interactive.await.unwrap();
    assert!(text.contains("[DONE]"));
    assert_eq!(second.await.unwrap(), 200);
    let done = wait_status(&gw, &id, "succeeded").await;
    let log = a.stats().log;
    assert_eq!(log.len(), 3);
    assert!(
        log[1].at_ms >= log[0].at_ms + 450,
        "served beside the stream: {log:?}"
    );
    let max_tokens = |i: usize| {
        serde_json::from_str::<serde_json::Value>(&log[i].body_text).unwrap()["max_tokens"].clone()
    };
    assert_eq!(
        max_tokens(1),
        3,
        "the interactive request got the slot first: {log:?}"
    );
    assert_eq!(max_tokens(2), 5, "the job came last: {log:?}");
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

/// A one-shot HTTP receiver for callbacks: each request's head and body.
async fn receiver() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body) = loop {
                    let n = conn.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break (head, buf[end + 4..end + 4 + len].to_vec());
                    }
                };
                let _ = conn
                    .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                    .await;
                let _ = tx.send((head, body));
            });
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_job_is_posted_signed_to_an_allowed_host_only() {
    use hmac::{Hmac, Mac};
    let a = sim("a").await;
    let (hook, mut received) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = "callback-secret-for-tests";
    let gw = Gateway::start_env(
        &format!(
            "[jobs]\ndir = \"{}\"\ncallback_hosts = [\"{hook}\"]\ncallback_secret_env = \"BALLAST_TEST_CALLBACK_SECRET\"\n{}{}",
            dir.path().display(),
            pool_toml("p", &[a.addr().to_string()], ""),
            route_toml("chat", "/v1/", "p", "openai = true\n[route.jobs]\nenabled = true")
        ),
        &[("BALLAST_TEST_CALLBACK_SECRET", secret)],
    )
    .await;

    // A host not in the list is refused at submission: nothing stored or run.
    for url in [
        format!("http://127.0.0.1:{}/x", hook.port() + 1),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "file:///etc/passwd".to_owned(),
    ] {
        let r = gw
            .client
            .post(gw.url("/v1/chat/completions"))
            .header("prefer", "respond-async")
            .header("ballast-callback-url", url.as_str())
            .body(ASK)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{url}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "callback_not_allowed");
    }
    assert_eq!(a.stats().requests, 0);

    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .header("prefer", "respond-async")
        .header("ballast-callback-url", format!("http://{hook}/done"))
        .body(ASK)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (head, body) = tokio::time::timeout(Duration::from_secs(20), received.recv())
        .await
        .expect("the callback came")
        .unwrap();
    assert!(head.starts_with("post /done "), "{head}");
    assert!(head.contains(&format!("ballast-job-id: {id}")), "{head}");
    let sig = head
        .lines()
        .find_map(|l| l.strip_prefix("ballast-signature:"))
        .unwrap()
        .trim()
        .to_owned();
    let (t, v1) = sig.split_once(',').unwrap();
    let t = t.strip_prefix("t=").unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&body);
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v1.strip_prefix("v1=").unwrap(), want, "a valid signature");
    let posted: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(posted["id"], id.as_str());
    assert_eq!(posted["status"], "succeeded");
    assert_eq!(posted["response"]["status"], 200);
    // The job says it was delivered; the secret is in no log line.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = job(&gw, &id).await;
        if v["callback"]["delivered"] == true {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!gw.log().contains(secret));
    let sent: serde_json::Value = serde_json::from_str(&a.stats().log[0].body_text).unwrap();
    assert_eq!(sent["model"], "sim-model");
    assert!(
        !a.stats().log[0]
            .headers
            .iter()
            .any(|(n, _)| n == "ballast-callback-url"),
        "the callback URL is the gateway's, not the backend's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_made_with_a_key_is_that_keys_only() {
    let a = sim("a").await;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    let digest = |k: &str| {
        use sha2::Digest;
        sha2::Sha256::digest(k.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    std::fs::write(
        &keys,
        format!(
            "[[key]]\nname = \"alice\"\nsha256 = \"{}\"\n[[key]]\nname = \"bob\"\nsha256 = \"{}\"\n",
            digest("sk-alice"),
            digest("sk-bob")
        ),
    )
    .unwrap();
    let gw = Gateway::start(&format!(
        "[auth]\nkeys_file = \"{}\"\n[jobs]\ndir = \"{}\"\n{}{}",
        keys.display(),
        dir.path().join("store").display(),
        pool_toml("p", &[a.addr().to_string()], ""),
        route_toml(
            "chat",
            "/v1/",
            "p",
            "openai = true\nrequire_key = true\n[route.jobs]\nenabled = true"
        )
    ))
    .await;
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("sk-alice")
        .header("prefer", "respond-async")
        .body(ASK)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let get = |key: Option<&'static str>| {
        let mut req = gw.client.get(gw.url(&format!("/v1/jobs/{id}")));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        req.send()
    };
    assert_eq!(get(Some("sk-alice")).await.unwrap().status(), 200);
    assert_eq!(
        get(Some("sk-bob")).await.unwrap().status(),
        404,
        "another key's job"
    );
    assert_eq!(get(None).await.unwrap().status(), 401);
    let r = gw
        .client
        .delete(gw.url(&format!("/v1/jobs/{id}")))
        .bearer_auth("sk-bob")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "nor can it cancel it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_running_job_aborts_its_attempt() {
    let a = sim("a").await;
    a.set_fault(latency(Duration::from_secs(10)));
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&config(dir.path(), &[a.addr().to_string()], "", "")).await;
    let id = submit(&gw, ASK).await;
    wait_until("the job is at the backend", || a.stats().in_flight == 1).await;
    assert_eq!(job(&gw, &id).await.1["status"], "running");
    let r = gw
        .client
        .delete(gw.url(&format!("/v1/jobs/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], "cancelled", "{v}");
    // The backend saw its client leave: the attempt's connection was closed.
    wait_until("the backend saw the abort", || {
        a.stats().disconnects_mid_response == 1
    })
    .await;
    assert_eq!(a.stats().in_flight, 0);
    gw.wait_metric(
        "ballast_jobs_total",
        &[("route", "chat"), ("result", "cancelled")],
        1.0,
    )
    .await;
    // A finished job stays as it is.
    let r = gw
        .client
        .delete(gw.url(&format!("/v1/jobs/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["status"],
        "cancelled"
    );
}
