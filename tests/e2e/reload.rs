//! Reloading the config under load: servers added, removed and
//! re-weighted, a route's retries changed, through `POST /reload` and
//! `SIGHUP`, then an invalid file; no client request fails, no stream is
//! cut, and every server that stays keeps its state.

use crate::harness::*;
use ballast::sim::{Fault, FaultKind, SimOptions, SimServer};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const STREAM: &str =
    r#"{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
const CHAT: &str = r#"{"model":"sim-model","messages":[{"role":"user","content":"hi"}]}"#;

async fn slow(name: &str) -> SimServer {
    sim_with(
        name,
        SimOptions {
            tokens: 40,
            token_interval: Duration::from_millis(40),
            ..SimOptions::default()
        },
    )
    .await
}

fn config(servers: &[(&SimServer, u32)], attempts: u32) -> String {
    let mut text = "[[pool]]\nname = \"p\"\nmax_fails = 1\nfail_timeout = \"120s\"\n".to_string();
    for (s, weight) in servers {
        text.push_str(&format!(
            "[[pool.servers]]\naddr = \"{}\"\nweight = {weight}\n",
            s.addr()
        ));
    }
    text.push_str(&format!(
        "{}[route.retry]\nattempts = {attempts}\nbackoff_max = \"120s\"\n",
        route_toml("r", "/", "p", "openai = true")
    ));
    text
}

/// Write `body` in place of the pool and route sections of the running
/// config (its [server], [admin] and [log] stay).
fn rewrite(gw: &Gateway, body: &str) {
    let path = gw.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    let head = &text[..text.find("[[pool]]").unwrap()];
    std::fs::write(&path, format!("{head}{body}")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_lose_nothing_and_keep_server_state() {
    let a = slow("a").await;
    let ejected = slow("ejected").await;
    let cooling = slow("cooling").await;
    let removed = slow("removed").await;
    let added = slow("added").await;
    let gw = Gateway::start(&config(
        &[(&a, 1), (&ejected, 1), (&cooling, 1), (&removed, 1)],
        3,
    ))
    .await;
    let url = gw.url("/v1/chat/completions");

    // One server ejected (a 502 with max_fails = 1), one cooling (a 429
    // asking for two minutes): the clients never notice, retries cover.
    ejected.set_fault(Fault {
        times: Some(1),
        ..Fault::new(FaultKind::Status {
            code: 502,
            retry_after: None,
        })
    });
    cooling.set_fault(Fault {
        times: Some(1),
        ..Fault::new(FaultKind::Status {
            code: 429,
            retry_after: Some("120".into()),
        })
    });
    for _ in 0..40 {
        let r = gw.client.post(&url).body(CHAT).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let e = gw.server_status(&ejected.addr().to_string()).await;
        let c = gw.server_status(&cooling.addr().to_string()).await;
        if e["state"] == "ejected" && c["state"] == "cooling" {
            break;
        }
    }
    gw.wait_server(&ejected.addr().to_string(), "ejected", |s| {
        s["state"] == "ejected"
    })
    .await;
    gw.wait_server(&cooling.addr().to_string(), "cooling", |s| {
        s["state"] == "cooling"
    })
    .await;

    // Long streams, spread over the two usable servers, and a steady load.
    let streams: Vec<_> = (0..6)
        .map(|_| {
            let (client, url) = (gw.client.clone(), url.clone());
            tokio::spawn(async move { whole_stream(&client, &url, STREAM).await })
        })
        .collect();
    wait_until("streams never reached the server to be removed", || {
        removed.stats().in_flight >= 1
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..3)
        .map(|_| {
            let (stop, failures) = (stop.clone(), failures.clone());
            let (client, url) = (gw.client.clone(), url.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match client.post(&url).body(CHAT).send().await {
                        Ok(r) if r.status() == 200 => {}
                        _ => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();

    // 1. Add a server, remove one (streams in flight on it), re-weight one.
    rewrite(
        &gw,
        &config(&[(&a, 3), (&ejected, 1), (&cooling, 1), (&added, 1)], 3),
    );
    let (status, answer) = gw.reload().await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["changes"]["servers_added"][0],
        format!("p/{}", added.addr())
    );
    assert_eq!(
        answer["changes"]["servers_removed"][0],
        format!("p/{}", removed.addr())
    );
    wait_until("the added server got no traffic", || {
        added.stats().requests >= 5
    })
    .await;
    // Whatever was on its way to the removed server has arrived by now.
    let removed_before = removed.stats().requests;
    assert_eq!(gw.server_status(&a.addr().to_string()).await["weight"], 3);
    // State carried over: still ejected, still cooling.
    assert_eq!(
        gw.server_status(&ejected.addr().to_string()).await["state"],
        "ejected"
    );
    assert_eq!(
        gw.server_status(&cooling.addr().to_string()).await["state"],
        "cooling"
    );

    // 2. A route's retry settings, by SIGHUP.
    rewrite(
        &gw,
        &config(&[(&a, 3), (&ejected, 1), (&cooling, 1), (&added, 1)], 2),
    );
    // SAFETY: a plain signal to the gateway process this test started.
    assert_eq!(unsafe { libc::kill(gw.pid() as i32, libc::SIGHUP) }, 0);
    gw.wait_metric("ballast_config_reloads_total", &[("result", "ok")], 2.0)
        .await;
    assert_eq!(gw.status_json().await["generation"], 3);

    // 3. An invalid file changes nothing and says why.
    let path = gw.config_path();
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, good.replace("max_fails = 1", "max_fails = -1")).unwrap();
    let (status, answer) = gw.reload().await;
    assert_eq!(status, 400, "{answer}");
    let problem = answer["problems"][0].as_str().unwrap();
    assert!(
        problem.contains("pool[0].max_fails") && problem.contains("ballast.toml:"),
        "{problem}"
    );
    assert_eq!(gw.status_json().await["generation"], 3);
    assert_eq!(
        gw.metric("ballast_config_reloads_total", &[("result", "error")])
            .await,
        1.0
    );

    // Every stream ended whole, the removed server's among them; it got
    // nothing new and then left /status and the metrics.
    for s in streams {
        assert!(s.await.unwrap(), "a stream was cut by a reload");
    }
    let removed_addr = removed.addr().to_string();
    gw.wait_unlisted(&removed_addr).await;
    assert!(!gw.metrics().await.contains(&removed_addr));
    assert_eq!(removed.stats().requests, removed_before);
    assert_eq!(removed.stats().in_flight, 0);

    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "client requests failed"
    );
    assert!(gw.log().contains("config reload refused"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_needs_a_restart_is_named_and_the_rest_applies() {
    let a = sim("a").await;
    let b = sim("b").await;
    let gw = Gateway::one_pool(&[a.addr().to_string()], "").await;
    let path = gw.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    let changed = text.replace("threads = 2", "threads = 1").replace(
        &format!("addr = \"{}\"", a.addr()),
        &format!("addr = \"{}\"", b.addr()),
    );
    std::fs::write(&path, changed).unwrap();
    let (status, answer) = gw.reload().await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["changes"]["needs_restart"],
        serde_json::json!(["server.threads"])
    );
    let r = gw.client.get(gw.url("/v1/models")).send().await.unwrap();
    assert_eq!(r.headers()["x-sim-server"], "b");
    assert!(gw.log().contains("need a restart"));
    // GET is not a reload.
    let r = gw.client.get(gw.admin_url("/reload")).send().await.unwrap();
    assert_eq!(r.status(), 405);
}
