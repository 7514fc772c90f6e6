//! Leases: whatever way a request ends, the server's outstanding count
//! returns to zero.

use crate::harness::*;
use ballast::sim::SimOptions;
use futures_util::StreamExt;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outstanding_returns_to_zero_however_requests_end() {
    let opts = SimOptions {
        tokens: 40,
        token_interval: Duration::from_millis(25),
        ..SimOptions::default()
    };
    let a = sim_with("a", opts.clone()).await;
    let b = sim_with("b", opts).await;
    let servers = [a.addr().to_string(), b.addr().to_string()];
    let gw = Gateway::one_pool(&servers, "max_fails = 0").await;
    let chat = gw.url("/v1/chat/completions");
    let stream_body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#;

    let mut tasks = Vec::new();
    // Successes.
    for _ in 0..10 {
        let (c, u) = (gw.client.clone(), gw.url("/x"));
        tasks.push(tokio::spawn(async move {
            assert_eq!(c.get(u).send().await.unwrap().status(), 200);
        }));
    }
    // Clients that go away mid-stream: read the first chunk, then drop.
    for _ in 0..6 {
        let (c, u) = (gw.client.clone(), chat.clone());
        tasks.push(tokio::spawn(async move {
            let r = c.post(u).body(stream_body).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let mut s = r.bytes_stream();
            assert!(s.next().await.is_some());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Backend errors.
    a.set_fault(status(500));
    b.set_fault(status(500));
    for _ in 0..4 {
        let r = gw.client.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 500);
    }
    // Backends that reset the connection.
    for s in [&a, &b] {
        s.set_fault(ballast::sim::Fault {
            kind: ballast::sim::FaultKind::Reset,
            latency: None,
            times: None,
        });
    }
    for _ in 0..4 {
        let r = gw.client.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 502);
    }

    for s in [a.addr().to_string(), b.addr().to_string()] {
        gw.wait_server(&s, "idle", |st| st["outstanding"] == 0)
            .await;
        assert_eq!(
            gw.metric("ballast_upstream_outstanding", &[("server", &s)])
                .await,
            0.0
        );
    }
    // The gateway closed the abandoned streams: the backends saw it.
    let gone = a.stats().disconnects_mid_response + b.stats().disconnects_mid_response;
    assert!(gone >= 6, "backends saw {gone} abandoned streams");
}
