//! RabbitMQ worker mode (`[[amqp]]`) against a real broker, with a `pika`
//! producer written as the seed's RPC client is: persistent requests with
//! `reply_to` and `correlation_id`. Every request gets its own reply; two
//! gateways share a queue; what cannot be served lands in the dead-letter
//! queue with its reason; a broker restart and a killed gateway lose
//! nothing; messages wait in the broker while interactive traffic holds
//! the backends.

use crate::harness::*;
use crate::rabbitmq::Broker;
use ballast::sim::SimOptions;
use std::collections::BTreeSet;
use std::time::Duration;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/amqp_client.py");

/// Run the pika client; its one JSON document.
async fn client(port: u16, args: &[&str]) -> serde_json::Value {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all.extend(["--port".into(), port.to_string()]);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(SCRIPT)
            .args(&all)
            .output()
    })
    .await
    .expect("join")
    .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "amqp client failed (is pika installed? scripts/test installs it):\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// A queue name no other test uses.
fn queue(name: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A backend that waits `ms` before each answer.
async fn slow_sim(name: &str, ms: u64) -> ballast::sim::SimServer {
    let opts = SimOptions {
        fault: latency(Duration::from_millis(ms)),
        ..SimOptions::default()
    };
    sim_with(name, opts).await
}

fn config(broker: &Broker, q: &str, servers: &[String], pool_extra: &str, amqp: &str) -> String {
    format!(
        "{}{}[[amqp]]\nname = \"q\"\nqueue = \"{q}\"\nurl = \"{}\"\nbackoff = \"50ms\"\n{amqp}\n",
        pool_toml("p", servers, pool_extra),
        route_toml("chat", "/v1/", "p", "openai = true"),
        broker.url()
    )
}

async fn connected(gw: &Gateway) {
    gw.wait_metric("ballast_amqp_connected", &[("consumer", "q")], 1.0)
        .await;
}

async fn publish(port: u16, q: &str, replies: &str, n: usize, first: usize) {
    let (n, first) = (n.to_string(), first.to_string());
    let args = [
        "publish",
        "--queue",
        q,
        "--reply-to",
        replies,
        "--n",
        &n,
        "--first",
        &first,
    ];
    client(port, &args).await;
}

/// Replies read from `queue` until `n` are in (or 60 s pass).
async fn collect(port: u16, queue: &str, n: usize) -> Vec<serde_json::Value> {
    let n = n.to_string();
    let got = client(
        port,
        &["collect", "--queue", queue, "--n", &n, "--timeout", "60"],
    )
    .await;
    got.as_array().expect("a list").clone()
}

async fn dead(port: u16, queue: &str, n: usize) -> Vec<serde_json::Value> {
    let n = n.to_string();
    let dead = format!("{queue}.dead");
    let got = client(
        port,
        &["drain", "--queue", &dead, "--n", &n, "--timeout", "20"],
    )
    .await;
    got.as_array().expect("a list").clone()
}

async fn ready_messages(port: u16, queue: &str) -> u64 {
    client(port, &["count", "--queue", queue]).await["messages"]
        .as_u64()
        .expect("a count")
}

/// Each reply answers its own request (request i asks for 1 + i % 40
/// tokens), is persistent and says 200; every correlation id is there.
fn check_replies(replies: &[serde_json::Value], ids: std::ops::Range<usize>) {
    let mut seen = BTreeSet::new();
    for r in replies {
        let c = r["correlation_id"].as_str().expect("a correlation id");
        let i: usize = c.strip_prefix("c-").expect("c-N").parse().expect("N");
        assert_eq!(r["headers"]["status"], 200, "{r}");
        assert_eq!(r["delivery_mode"], 2, "{r}");
        assert_eq!(r["message_id"], format!("m-{i}"), "{r}");
        let body: serde_json::Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["object"], "chat.completion", "{r}");
        assert_eq!(body["usage"]["completion_tokens"], 1 + i % 40, "{r}");
        seen.insert(i);
    }
    assert_eq!(seen, ids.collect::<BTreeSet<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_answered_to_its_reply_queue_with_its_correlation_id() {
    let Some((broker, _use)) = Broker::shared().await else {
        return;
    };
    let (a, b) = (slow_sim("a", 30).await, slow_sim("b", 30).await);
    let q = queue("answers");
    let servers = [a.addr().to_string(), b.addr().to_string()];
    let gw = Gateway::start(&config(broker, &q, &servers, "max_conns = 2", "")).await;
    connected(&gw).await;
    let replies = format!("{q}-replies");
    publish(broker.port, &q, &replies, 30, 0).await;
    let got = collect(broker.port, &replies, 30).await;
    assert_eq!(got.len(), 30);
    check_replies(&got, 0..30);

    // The backends saw each request once, named by its message id.
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(sa.requests + sb.requests, 30);
    let ids: BTreeSet<String> = sa
        .log
        .iter()
        .chain(sb.log.iter())
        .flat_map(|r| recorded_header(r, "x-request-id"))
        .map(str::to_owned)
        .collect();
    assert_eq!(ids, (0..30).map(|i| format!("m-{i}")).collect());
    // Spare capacity only: never more than the caps at once.
    assert!(sa.peak_in_flight <= 2 && sb.peak_in_flight <= 2);
    gw.wait_metric(
        "ballast_amqp_messages_total",
        &[("consumer", "q"), ("result", "succeeded")],
        30.0,
    )
    .await;
    assert_eq!(ready_messages(broker.port, &q).await, 0);
    assert_eq!(ready_messages(broker.port, &format!("{q}.dead")).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_queue() {
    let Some((broker, _use)) = Broker::shared().await else {
        return;
    };
    let a = slow_sim("a", 100).await;
    let q = queue("shared");
    let servers = [a.addr().to_string()];
    let cfg = config(broker, &q, &servers, "max_conns = 2", "");
    let (one, two) = (Gateway::start(&cfg).await, Gateway::start(&cfg).await);
    connected(&one).await;
    connected(&two).await;
    let replies = format!("{q}-replies");
    publish(broker.port, &q, &replies, 40, 0).await;
    let got = collect(broker.port, &replies, 40).await;
    check_replies(&got, 0..40);
    let labels = [("consumer", "q"), ("result", "succeeded")];
    let (n1, n2) = (
        one.metric("ballast_amqp_messages_total", &labels).await,
        two.metric("ballast_amqp_messages_total", &labels).await,
    );
    // Each held at most its free slots, so both had a share.
    assert!(n1 > 0.0 && n2 > 0.0, "one {n1}, two {n2}");
    assert_eq!(n1 + n2, 40.0);
    assert_eq!(a.stats().requests, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_be_served_is_answered_and_dead_lettered_with_its_reason() {
    let Some((broker, _use)) = Broker::shared().await else {
        return;
    };
    let a = sim("a").await;
    let q = queue("poison");
    let limits = "[limits]\nmax_request_body = 4096\n";
    let gw = Gateway::start(&format!(
        "{limits}{}",
        config(broker, &q, &[a.addr().to_string()], "", "")
    ))
    .await;
    connected(&gw).await;
    let replies = format!("{q}-replies");
    let raw = |body: &str, id: &str, extra: &[&str]| {
        let mut args: Vec<String> = ["raw", "--queue", &q, "--reply-to", &replies]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend([
            "--body".into(),
            body.into(),
            "--correlation-id".into(),
            id.into(),
        ]);
        args.extend(extra.iter().map(|s| s.to_string()));
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            client(broker.port, &args).await;
        }
    };
    raw("{not json", "bad-json", &[]).await;
    raw("{}", "bad-path", &["--header", "path=v1/no-slash"]).await;
    raw("hello", "bad-type", &["--content-type", "text/plain"]).await;
    let policy = r#"{"model":"sim-model","messages":[{"role":"user","content":"sim:policy"}]}"#;
    raw(policy, "refused", &[]).await;
    let fine =
        r#"{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"max_tokens":3}"#;
    raw(fine, "fine", &[]).await;
    // Compressed, it is decoded (and its decoded size is what counts).
    raw(fine, "gzipped", &["--gzip"]).await;
    raw("x", "too-large", &["--repeat", "5000"]).await;

    let got = collect(broker.port, &replies, 7).await;
    let by_id = |id: &str| {
        got.iter()
            .find(|r| r["correlation_id"] == id)
            .unwrap_or_else(|| panic!("no reply for {id}: {got:?}"))
            .clone()
    };
    for (id, status, code) in [
        ("bad-json", 400, "invalid_request"),
        ("bad-path", 400, "invalid_path"),
        ("bad-type", 415, "unsupported_content_type"),
        ("refused", 400, "upstream_refused"),
        ("too-large", 413, "body_too_large"),
    ] {
        let r = by_id(id);
        assert_eq!(r["headers"]["status"], status, "{r}");
        assert_eq!(r["headers"]["error"], code, "{r}");
        let body: serde_json::Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
        assert!(body["error"]["message"].is_string(), "{r}");
    }
    // The backend's own refusal is passed back as it was.
    let refused: serde_json::Value =
        serde_json::from_str(by_id("refused")["body"].as_str().unwrap()).unwrap();
    assert_eq!(refused["error"]["code"], "content_policy_violation");
    assert_eq!(by_id("fine")["headers"]["status"], 200);
    assert_eq!(by_id("gzipped")["headers"]["status"], 200);

    let letters = dead(broker.port, &q, 5).await;
    assert_eq!(letters.len(), 5, "{letters:?}");
    for (id, reason) in [
        ("bad-json", "invalid_request"),
        ("bad-path", "invalid_path"),
        ("bad-type", "unsupported_content_type"),
        ("refused", "upstream_refused"),
        ("too-large", "body_too_large"),
    ] {
        let d = letters
            .iter()
            .find(|d| d["correlation_id"] == id)
            .unwrap_or_else(|| panic!("{id} not dead-lettered: {letters:?}"));
        assert_eq!(d["headers"]["ballast-reason"], reason, "{d}");
        assert!(d["headers"]["ballast-detail"].is_string(), "{d}");
        assert_eq!(d["delivery_mode"], 2, "{d}");
    }
    // The original body is kept, and the client's own headers.
    let bad_path = letters
        .iter()
        .find(|d| d["correlation_id"] == "bad-path")
        .unwrap();
    assert_eq!(bad_path["body"], "{}");
    assert_eq!(bad_path["headers"]["path"], "v1/no-slash");
    // Only the three requests reached the backend, the gzipped one decoded;
    // nothing is left behind.
    let seen = a.stats();
    assert_eq!(seen.requests, 3);
    assert!(seen
        .log
        .iter()
        .all(|r| recorded_header(r, "content-encoding").is_empty()));
    assert!(seen.log.iter().all(|r| r.body_text.starts_with('{')));
    assert_eq!(ready_messages(broker.port, &q).await, 0);
    for (result, n) in [("invalid", 4.0), ("refused", 1.0), ("succeeded", 2.0)] {
        gw.wait_metric(
            "ballast_amqp_messages_total",
            &[("consumer", "q"), ("result", result)],
            n,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_then_dead_lettered() {
    let Some((broker, _use)) = Broker::shared().await else {
        return;
    };
    let a = sim_with(
        "a",
        SimOptions {
            fault: status(503),
            ..SimOptions::default()
        },
    )
    .await;
    let q = queue("busy");
    // Never ejected (max_fails = 0): each attempt reaches it.
    let cfg = config(
        broker,
        &q,
        &[a.addr().to_string()],
        "max_fails = 0",
        "max_attempts = 3",
    );
    let gw = Gateway::start(&cfg).await;
    connected(&gw).await;
    let replies = format!("{q}-replies");
    publish(broker.port, &q, &replies, 1, 0).await;
    let got = collect(broker.port, &replies, 1).await;
    assert_eq!(got[0]["headers"]["status"], 503, "{got:?}");
    assert_eq!(got[0]["headers"]["attempts"], 3, "{got:?}");
    assert_eq!(got[0]["headers"]["error"], "upstream_status", "{got:?}");
    let letters = dead(broker.port, &q, 1).await;
    assert_eq!(letters[0]["headers"]["ballast-reason"], "upstream_status");
    assert_eq!(letters[0]["headers"]["ballast-attempts"], 3);
    assert_eq!(letters[0]["headers"]["ballast-status"], 503);
    assert!(a.stats().requests >= 3);

    // Once the backend is well, the next one is served.
    a.set_fault(ballast::sim::Fault::default());
    publish(broker.port, &q, &replies, 1, 1).await;
    let got = collect(broker.port, &replies, 1).await;
    check_replies(&got, 1..2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_wait_in_the_broker_while_interactive_requests_hold_the_backend() {
    let Some((broker, _use)) = Broker::shared().await else {
        return;
    };
    let a = sim_with(
        "a",
        SimOptions {
            token_interval: Duration::from_millis(50),
            ..SimOptions::default()
        },
    )
    .await;
    let q = queue("spare");
    let gw = Gateway::start(&config(
        broker,
        &q,
        &[a.addr().to_string()],
        "max_conns = 1",
        "",
    ))
    .await;
    connected(&gw).await;
    // An interactive stream holds the one slot for about two seconds.
    let (client, url) = (gw.client.clone(), gw.url("/v1/chat/completions"));
    let stream = tokio::spawn(async move {
        let ask = r#"{"model":"sim-model","stream":true,"max_tokens":40,"messages":[{"role":"user","content":"hi"}]}"#;
        whole_stream(&client, &url, ask).await
    });
    wait_until("the stream holds the backend", || a.stats().in_flight == 1).await;
    let replies = format!("{q}-replies");
    publish(broker.port, &q, &replies, 6, 0).await;
    // The window is the one message in hand: the other five wait in the
    // broker, and the backend sees none of them.
    let status = gw.status_json().await;
    assert_eq!(status["amqp"][0]["prefetch"], 1, "{status}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ready_messages(broker.port, &q).await != 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "messages were not left in the broker"
        );
    }
    assert_eq!(a.stats().in_flight, 1);
    assert!(!stream.is_finished());
    assert_eq!(
        a.stats().requests,
        1,
        "a message took the interactive request's slot"
    );
    assert!(stream.await.unwrap(), "the interactive stream was whole");
    let got = collect(broker.port, &replies, 6).await;
    check_replies(&got, 0..6);
    assert_eq!(a.stats().peak_in_flight, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_nothing() {
    let Some((broker, _use)) = Broker::exclusive().await else {
        return;
    };
    let a = slow_sim("a", 100).await;
    let q = queue("restart");
    let gw = Gateway::start(&config(
        broker,
        &q,
        &[a.addr().to_string()],
        "max_conns = 2",
        "",
    ))
    .await;
    connected(&gw).await;
    let replies = format!("{q}-replies");
    publish(broker.port, &q, &replies, 40, 0).await;
    gw.wait_metric_at_least(
        "ballast_amqp_messages_total",
        &[("consumer", "q"), ("result", "succeeded")],
        4.0,
    )
    .await;
    broker.stop().await;
    gw.wait_metric("ballast_amqp_connected", &[("consumer", "q")], 0.0)
        .await;
    // Still serving HTTP, and saying why the consumer is idle.
    let ready = gw.client.get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let text = ready.text().await.unwrap();
    assert!(
        text.contains("amqp 'q': disconnected from amqp://127.0.0.1:"),
        "{text}"
    );
    assert!(!text.contains("guest"), "{text}");
    broker.start().await;
    connected(&gw).await;
    // Every request is answered; one in hand at the restart may be answered
    // twice (at-least-once), never lost.
    let got = collect(broker.port, &replies, 40).await;
    let mut unique = std::collections::BTreeMap::new();
    for r in &got {
        unique.insert(r["correlation_id"].as_str().unwrap().to_owned(), r.clone());
    }
    let unique: Vec<serde_json::Value> = unique.into_values().collect();
    check_replies(&unique, 0..40);
    assert!(
        gw.metric("ballast_amqp_disconnects_total", &[("consumer", "q")])
            .await
            >= 1.0
    );
    assert_eq!(ready_messages(broker.port, &q).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateways_messages_are_redelivered_to_the_other() {
    let Some((broker, _use)) = Broker::shared().await else {
        return;
    };
    let a = slow_sim("a", 600).await;
    let q = queue("killed");
    let cfg = config(broker, &q, &[a.addr().to_string()], "max_conns = 3", "");
    let mut first = Gateway::start(&cfg).await;
    connected(&first).await;
    let replies = format!("{q}-replies");
    publish(broker.port, &q, &replies, 8, 0).await;
    wait_until("the first gateway runs messages", || {
        a.stats().in_flight == 3
    })
    .await;
    first.signal(9);
    first.wait_exit(Duration::from_secs(5)).await;
    let second = Gateway::start(&cfg).await;
    let got = collect(broker.port, &replies, 8).await;
    check_replies(&got, 0..8);
    // The three the first one held unacked came back to the second.
    assert!(
        second.log().matches("redelivered=true").count() >= 3,
        "{}",
        second.log()
    );
    assert_eq!(ready_messages(broker.port, &q).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_without_its_broker_says_so_and_http_is_still_served() {
    let a = sim("a").await;
    let dead = dead_addr();
    let cfg = format!(
        "{}{}[[amqp]]\nname = \"q\"\nqueue = \"requests\"\nurl_env = \"TEST_AMQP_URL\"\n",
        pool_toml("p", &[a.addr().to_string()], ""),
        route_toml("chat", "/v1/", "p", "openai = true"),
    );
    let url = format!("amqp://ballast:pw-not-shown-77@{dead}/%2f");
    let gw = Gateway::start_env(&cfg, &[("TEST_AMQP_URL", &url)]).await;
    gw.wait_metric_at_least("ballast_amqp_disconnects_total", &[("consumer", "q")], 1.0)
        .await;
    assert_eq!(
        gw.metric("ballast_amqp_connected", &[("consumer", "q")])
            .await,
        0.0
    );
    let ready = gw.client.get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let text = ready.text().await.unwrap();
    assert!(
        text.contains(&format!("amqp 'q': disconnected from amqp://{dead}/%2F")),
        "{text}"
    );
    assert!(text.contains("Connection refused"), "{text}");
    let status = gw.status_json().await;
    assert_eq!(status["amqp"][0]["state"], "disconnected", "{status}");
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .body(r#"{"model":"sim-model","messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for seen in [text, status.to_string(), gw.log(), gw.metrics().await] {
        assert!(!seen.contains("pw-not-shown-77"), "{seen}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_verifies_the_broker_against_the_ca_file() {
    let Some((broker, _use)) = Broker::shared().await else {
        return;
    };
    let a = sim("a").await;
    let q = queue("tls");
    let body = |extra: &str| {
        format!(
            "{}{}[[amqp]]\nname = \"q\"\nqueue = \"{q}\"\nurl = \"{}\"\n{extra}\n",
            pool_toml("p", &[a.addr().to_string()], ""),
            route_toml("chat", "/v1/", "p", "openai = true"),
            broker.tls_url("localhost"),
        )
    };
    let ca = format!("ca_file = \"{}\"", broker.pki.ca_file.display());
    let gw = Gateway::start(&body(&ca)).await;
    connected(&gw).await;
    let replies = format!("{q}-replies");
    publish(broker.port, &q, &replies, 3, 0).await;
    check_replies(&collect(broker.port, &replies, 3).await, 0..3);

    // Not trusted without the CA: no connection, and /readyz says why.
    let untrusting = Gateway::start(&body("")).await;
    untrusting
        .wait_metric_at_least("ballast_amqp_disconnects_total", &[("consumer", "q")], 1.0)
        .await;
    let text = untrusting
        .client
        .get(untrusting.admin_url("/readyz"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("amqp 'q': disconnected from amqps://localhost:"),
        "{text}"
    );
    assert!(text.to_lowercase().contains("certificate"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_declare_off_a_missing_queue_is_reported_not_created() {
    let Some((broker, _use)) = Broker::shared().await else {
        return;
    };
    let a = sim("a").await;
    let q = queue("undeclared");
    let cfg = config(broker, &q, &[a.addr().to_string()], "", "declare = false");
    let gw = Gateway::start(&cfg).await;
    gw.wait_metric_at_least("ballast_amqp_disconnects_total", &[("consumer", "q")], 1.0)
        .await;
    let status = gw.status_json().await;
    let error = status["amqp"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("does not exist"), "{status}");
    assert!(error.contains("declare = true"), "{status}");
    // Once declared (here by a gateway with declare on), it is used as it is.
    let declaring = Gateway::start(&config(broker, &q, &[a.addr().to_string()], "", "")).await;
    connected(&declaring).await;
    connected(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_gateway_finishes_the_messages_in_hand_and_takes_no_more() {
    let Some((broker, _use)) = Broker::shared().await else {
        return;
    };
    let a = slow_sim("a", 800).await;
    let q = queue("drain");
    let cfg = config(broker, &q, &[a.addr().to_string()], "max_conns = 2", "");
    let mut gw = Gateway::start_server("drain_delay = \"0s\"\ngrace_period = \"20s\"", &cfg).await;
    connected(&gw).await;
    let replies = format!("{q}-replies");
    publish(broker.port, &q, &replies, 6, 0).await;
    wait_until("two messages run", || a.stats().in_flight == 2).await;
    gw.signal(libc::SIGTERM);
    let status = gw.wait_exit(Duration::from_secs(20)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        gw.log()
    );
    assert!(gw
        .log()
        .contains("amqp consumer stopped taking messages (draining)"));
    // The two in hand were answered and acked; the other four wait in the
    // broker, none of them half-done.
    let answered = collect(broker.port, &replies, 2).await;
    assert_eq!(answered.len(), 2);
    assert_eq!(a.stats().requests, 2);
    assert_eq!(ready_messages(broker.port, &q).await, 4);
    // The next gateway takes the rest.
    let next = Gateway::start(&cfg).await;
    let rest = collect(broker.port, &replies, 4).await;
    let all: Vec<serde_json::Value> = answered.into_iter().chain(rest).collect();
    check_replies(&all, 0..6);
    assert_eq!(
        next.metric(
            "ballast_amqp_messages_total",
            &[("consumer", "q"), ("result", "succeeded")]
        )
        .await,
        4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_over_max_reply_bytes_is_not_sent_but_dead_lettered() {
    let Some((broker, _use)) = Broker::shared().await else {
        return;
    };
    let a = sim("a").await;
    let q = queue("large");
    let cfg = config(
        broker,
        &q,
        &[a.addr().to_string()],
        "",
        "max_reply_bytes = 200",
    );
    let gw = Gateway::start(&cfg).await;
    connected(&gw).await;
    let replies = format!("{q}-replies");
    // Request 39 asks for 40 tokens: an answer of some 400 bytes.
    publish(broker.port, &q, &replies, 1, 39).await;
    let got = collect(broker.port, &replies, 1).await;
    assert_eq!(got[0]["headers"]["error"], "result_too_large", "{got:?}");
    // The answer is not there for the client: a gateway error.
    assert_eq!(got[0]["headers"]["status"], 502, "{got:?}");
    let body: serde_json::Value = serde_json::from_str(got[0]["body"].as_str().unwrap()).unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_reply_bytes"),
        "{body}"
    );
    let letters = dead(broker.port, &q, 1).await;
    assert_eq!(letters[0]["headers"]["ballast-reason"], "result_too_large");
    gw.wait_metric(
        "ballast_amqp_messages_total",
        &[("consumer", "q"), ("result", "failed")],
        1.0,
    )
    .await;
}
