//! Prefix affinity (`pool.balance = "prefix_affinity"`): the turns of a
//! conversation go to the server that served its earlier turns, while that
//! server is not overloaded and can take them.

use crate::harness::*;
use std::time::Duration;

/// A conversation's messages after `turns` user turns, with the
/// assistant's answers between them: a document of its own (several prefix
/// blocks) in the first turn, then short questions, so that each turn's
/// prompt is mostly the one before. Their short system prompt is shared
/// by all, but is less than a block: a long shared one would make every
/// first turn a match for the server that served it first (the point of
/// affinity, but not of this test).
fn conversation(id: usize, turns: usize) -> String {
    let mut messages = vec![serde_json::json!({
        "role": "system",
        "content": "You are a helpful assistant.",
    })];
    for t in 0..turns {
        let content = if t == 0 {
            format!("Read document {id}: ") + &format!("paragraph of document {id}. ").repeat(40)
        } else {
            format!("question {t} about document {id}?")
        };
        messages.push(serde_json::json!({"role": "user", "content": content}));
        if t + 1 < turns {
            messages
                .push(serde_json::json!({"role": "assistant", "content": format!("answer {t}.")}));
        }
    }
    serde_json::json!({"model": "sim-model", "messages": messages}).to_string()
}

async fn turn(gw: &Gateway, body: String) -> (u16, String) {
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .body(body)
        .send()
        .await
        .unwrap();
    let server = r
        .headers()
        .get("x-sim-server")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (r.status().as_u16(), server)
}

fn affinity_pool(servers: &[String], extra: &str) -> String {
    pool_toml(
        "p",
        servers,
        &format!("balance = \"prefix_affinity\"\n{extra}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_turns_of_a_conversation_stay_on_one_server() {
    let sims = [sim("s1").await, sim("s2").await, sim("s3").await];
    let addrs: Vec<String> = sims.iter().map(|s| s.addr().to_string()).collect();
    let gw = Gateway::start(&format!(
        "{}{}",
        affinity_pool(&addrs, ""),
        route_toml("chat", "/v1/", "p", "openai = true")
    ))
    .await;
    let conversations = 12;
    let turns = 3;
    let mut homes = Vec::new();
    for c in 0..conversations {
        let mut served = Vec::new();
        for t in 1..=turns {
            let (status, server) = turn(&gw, conversation(c, t)).await;
            assert_eq!(status, 200);
            served.push(server);
        }
        assert!(
            served.iter().all(|s| *s == served[0]),
            "conversation {c} moved: {served:?}"
        );
        homes.push(served[0].clone());
    }
    // Their first turns went by load (ties at random): not all to one.
    homes.sort();
    homes.dedup();
    assert!(homes.len() > 1, "every conversation on {homes:?}");
    let m = gw.metrics().await;
    let count = |result| {
        metric_value(
            &m,
            "ballast_affinity_decisions_total",
            &[("pool", "p"), ("result", result)],
        )
    };
    assert_eq!(count("miss"), conversations as f64);
    assert_eq!(count("hit"), (conversations * (turns - 1)) as f64);
    assert_eq!(count("overloaded"), 0.0);
    assert!(metric_value(&m, "ballast_prefix_store_blocks", &[("pool", "p")]) > 0.0);
    assert!(gw.status_json().await["pools"][0]["prefix_blocks"].as_u64() > Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_holder_shares_its_conversation() {
    let (a, b) = (sim("a").await, sim("b").await);
    let addrs = [a.addr().to_string(), b.addr().to_string()];
    let gw = Gateway::start(&format!(
        "{}{}",
        affinity_pool(
            &addrs,
            "[pool.affinity]\nbalance_abs = 2\nbalance_rel = 1.5\n"
        ),
        route_toml("chat", "/v1/", "p", "openai = true")
    ))
    .await;
    let (_, home) = turn(&gw, conversation(1, 1)).await;
    let (holder, other) = if home == "a" { (&a, &b) } else { (&b, &a) };
    // The holder turns slow; many requests of the conversation arrive at
    // once: it takes them while within the leeway, then the other does.
    holder.set_fault(latency(Duration::from_secs(1)));
    let sent: Vec<_> = (0..8)
        .map(|_| {
            let client = gw.client.clone();
            let url = gw.url("/v1/chat/completions");
            let body = conversation(1, 2);
            tokio::spawn(
                async move { client.post(url).body(body).send().await.map(|r| r.status()) },
            )
        })
        .collect();
    for s in sent {
        assert_eq!(s.await.unwrap().unwrap(), 200);
    }
    assert!(holder.stats().requests >= 3, "the holder kept some");
    assert!(
        other.stats().requests >= 1,
        "the overloaded holder gave some away"
    );
    assert!(
        gw.metric(
            "ballast_affinity_decisions_total",
            &[("pool", "p"), ("result", "overloaded")]
        )
        .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejected_holders_conversations_move_and_stay_moved() {
    let (a, b) = (sim("a").await, sim("b").await);
    let addrs = [a.addr().to_string(), b.addr().to_string()];
    let gw = Gateway::start(&format!(
        "{}{}",
        affinity_pool(&addrs, "max_fails = 1\nfail_timeout = \"60s\"\n"),
        route_toml("chat", "/v1/", "p", "openai = true")
    ))
    .await;
    let (_, home) = turn(&gw, conversation(7, 1)).await;
    let (holder, holder_addr, other) = if home == "a" {
        (&a, &addrs[0], "b")
    } else {
        (&b, &addrs[1], "a")
    };
    holder.set_fault(status(500));
    // Its next turn still goes home, fails there, and ejects it.
    let (status, server) = turn(&gw, conversation(7, 2)).await;
    assert_eq!((status, server.as_str()), (500, home.as_str()));
    gw.wait_server(holder_addr, "ejected", |s| s["state"] == "ejected")
        .await;
    // From then on the conversation lives on the other server.
    for t in 3..=5 {
        let (status, server) = turn(&gw, conversation(7, t)).await;
        assert_eq!((status, server.as_str()), (200, other), "turn {t}");
    }
    let hits = gw
        .metric(
            "ballast_affinity_decisions_total",
            &[("pool", "p"), ("result", "hit")],
        )
        .await;
    assert!(hits >= 3.0, "turns 4 and 5 follow turn 3 to its new home");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_reports_a_long_queue_gets_fewer_requests() {
    let (a, b) = (sim("a").await, sim("b").await);
    let addrs = [a.addr().to_string(), b.addr().to_string()];
    let gw = Gateway::start(&format!(
        "{}{}",
        pool_toml("p", &addrs, "[pool.load_metrics]\ninterval = \"100ms\"\n"),
        route_toml("chat", "/v1/", "p", "")
    ))
    .await;
    // b is busy with traffic from elsewhere: its own metrics say so.
    gw.client
        .post(format!("http://{}/_sim/load", addrs[1]))
        .body(r#"{"running": 6, "waiting": 30}"#)
        .send()
        .await
        .unwrap();
    gw.wait_server(&addrs[1], "reporting its queue", |s| {
        s["reported"]["waiting"] == 30.0 && s["reported"]["running"] == 6.0
    })
    .await;
    for _ in 0..20 {
        assert_eq!(
            gw.client
                .get(gw.url("/v1/models"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    assert_eq!(a.stats().requests, 20, "all to the server with no queue");
    assert_eq!(b.stats().requests, 0);
    // Its queue drains: it gets its share again.
    gw.client
        .post(format!("http://{}/_sim/load", addrs[1]))
        .body(r#"{"running": 0, "waiting": 0}"#)
        .send()
        .await
        .unwrap();
    gw.wait_server(&addrs[1], "idle again", |s| s["reported"]["waiting"] == 0.0)
        .await;
    for _ in 0..40 {
        assert_eq!(
            gw.client
                .get(gw.url("/v1/models"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    assert!(b.stats().requests >= 5, "b is back: {}", b.stats().requests);
    assert!(
        gw.metric(
            "ballast_load_scrapes_total",
            &[("pool", "p"), ("result", "ok")]
        )
        .await
            >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_scrape_never_takes_a_server_out() {
    let a = sim("a").await;
    let addr = a.addr().to_string();
    let gw = Gateway::start(&format!(
        "{}{}",
        pool_toml(
            "p",
            std::slice::from_ref(&addr),
            "[pool.load_metrics]\ninterval = \"100ms\"\npath = \"/no-metrics-here\"\n"
        ),
        route_toml("chat", "/v1/", "p", "")
    ))
    .await;
    gw.wait_metric_at_least(
        "ballast_load_scrapes_total",
        &[("pool", "p"), ("result", "missing")],
        2.0,
    )
    .await;
    assert_eq!(gw.server_status(&addr).await["state"], "up");
    assert_eq!(
        gw.client
            .get(gw.url("/v1/models"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_header_keeps_a_session_on_one_server_until_it_is_overloaded() {
    let sims = [sim("s1").await, sim("s2").await, sim("s3").await];
    let addrs: Vec<String> = sims.iter().map(|s| s.addr().to_string()).collect();
    let gw = Gateway::start(&format!(
        "{}{}",
        pool_toml(
            "p",
            &addrs,
            "affinity_header = \"x-session-id\"\n[pool.affinity]\nbalance_abs = 1\nbalance_rel = 1.5\n"
        ),
        route_toml("chat", "/v1/", "p", "")
    ))
    .await;
    let served = |session: String| {
        let req = gw
            .client
            .get(gw.url("/v1/models"))
            .header("x-session-id", session);
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.headers()["x-sim-server"].to_str().unwrap().to_string()
        }
    };
    let mut homes = Vec::new();
    for s in 0..15 {
        let first = served(format!("user-{s}")).await;
        for _ in 0..3 {
            assert_eq!(served(format!("user-{s}")).await, first, "user-{s} moved");
        }
        homes.push(first);
    }
    homes.sort();
    homes.dedup();
    assert!(homes.len() > 1, "every session on {homes:?}");

    // Its server slows down and the session sends many at once: beyond the
    // leeway the others take some.
    let home = served("user-0".into()).await;
    let slow = sims.iter().find(|s| s.name() == home).unwrap();
    slow.set_fault(latency(Duration::from_millis(800)));
    let burst: Vec<_> = (0..6)
        .map(|_| tokio::spawn(served("user-0".into())))
        .collect();
    let mut elsewhere = 0;
    for b in burst {
        if b.await.unwrap() != home {
            elsewhere += 1;
        }
    }
    assert!(elsewhere >= 1, "the overloaded server kept the whole burst");
    assert!(
        gw.metric(
            "ballast_affinity_decisions_total",
            &[("pool", "p"), ("result", "overloaded")]
        )
        .await
            >= 1.0
    );
}
