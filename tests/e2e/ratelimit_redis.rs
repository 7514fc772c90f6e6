//! Per-key limits shared by gateways through a real Redis (Debian's
//! `redis-server`, installed by scripts/test, started here on a loopback
//! port), and what happens while it is gone.

use crate::harness::*;
use ballast::keys::hash_hex;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    async fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs Debian's package)");
        let r = Redis { child, port };
        r.wait_ready().await;
        r
    }

    async fn start() -> Redis {
        Redis::start_on(free_port()).await
    }

    /// Until it answers PING.
    async fn wait_ready(&self) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(mut c) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await {
                let mut buf = [0u8; 7];
                if c.write_all(b"PING\r\n").await.is_ok()
                    && c.read_exact(&mut buf).await.is_ok()
                    && &buf == b"+PONG\r\n"
                {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn keys_file(dir: &tempfile::TempDir, key: &str, limits: &str) -> String {
    let path = dir.path().join("keys.toml");
    std::fs::write(
        &path,
        format!(
            "[[key]]\nname = \"shared\"\nsha256 = \"{}\"\n{limits}\n",
            hash_hex(key)
        ),
    )
    .unwrap();
    format!("[auth]\nkeys_file = \"{}\"\n\n", path.display())
}

async fn gateway(auth: &str, ratelimit: &str, backend: &str) -> Gateway {
    Gateway::start(&format!(
        "{auth}[ratelimit]\n{ratelimit}\n\n{}{}",
        pool_toml("p", &[backend.to_string()], ""),
        route_toml("chat", "/v1/", "p", "require_key = true")
    ))
    .await
}

async fn call(gw: &Gateway, key: &str) -> u16 {
    gw.client
        .get(gw.url("/v1/models"))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_enforce_one_limit_through_redis() {
    let redis = Redis::start().await;
    let a = sim("a").await;
    let dir = tempfile::tempdir().unwrap();
    let key = "sk-shared-redis-test-key";
    let auth = keys_file(&dir, key, "rpm = 4\nmax_concurrent = 1");
    let redis_cfg = format!("redis = \"{}\"", redis.url());
    let (one, two) = (
        gateway(&auth, &redis_cfg, &a.addr().to_string()).await,
        gateway(&auth, &redis_cfg, &a.addr().to_string()).await,
    );
    away_from_a_window_edge().await;

    // Four requests per minute between them, whichever gets them.
    for gw in [&one, &two, &one, &two] {
        assert_eq!(call(gw, key).await, 200);
    }
    assert_eq!(call(&one, key).await, 429);
    assert_eq!(call(&two, key).await, 429);
    assert_eq!(a.stats().requests, 4);
    // Redis names the key by its name, never by the key.
    let seen = Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "--scan"])
        .output()
        .unwrap();
    let seen = String::from_utf8_lossy(&seen.stdout);
    assert!(seen.contains("ballast:{shared}:r:"), "{seen}");
    assert!(!seen.contains(key), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_are_counted_across_gateways() {
    let redis = Redis::start().await;
    let a = sim("a").await;
    let dir = tempfile::tempdir().unwrap();
    let key = "sk-shared-concurrency-key";
    let auth = keys_file(&dir, key, "max_concurrent = 1");
    let redis_cfg = format!("redis = \"{}\"", redis.url());
    let backend = a.addr().to_string();
    let (one, two) = (
        gateway(&auth, &redis_cfg, &backend).await,
        gateway(&auth, &redis_cfg, &backend).await,
    );
    a.set_fault(latency(Duration::from_secs(2)));
    let slow = tokio::spawn({
        let client = one.client.clone();
        let url = one.url("/v1/models");
        async move {
            client
                .get(url)
                .header("x-api-key", key)
                .send()
                .await
                .map(|r| r.status())
        }
    });
    one.wait_server(&backend, "busy", |s| s["outstanding"] == 1)
        .await;
    assert_eq!(
        call(&two, key).await,
        429,
        "the other gateway's request counts"
    );
    assert_eq!(slow.await.unwrap().unwrap(), 200);
    a.set_fault(latency(Duration::ZERO));
    // Given back when it ended (released in the background: poll).
    let deadline = Instant::now() + Duration::from_secs(10);
    while call(&two, key).await != 200 {
        assert!(Instant::now() < deadline, "the place never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_requests_pass_or_are_refused_as_configured_and_counting_resumes() {
    let mut redis = Redis::start().await;
    let port = redis.port;
    let a = sim("a").await;
    let dir = tempfile::tempdir().unwrap();
    let key = "sk-redis-outage-key";
    let auth = keys_file(&dir, key, "rpm = 2");
    let backend = a.addr().to_string();
    let open = gateway(&auth, &format!("redis = \"{}\"", redis.url()), &backend).await;
    let closed = gateway(
        &auth,
        &format!("redis = \"{}\"\nfail_open = false", redis.url()),
        &backend,
    )
    .await;
    away_from_a_window_edge().await;
    assert_eq!(call(&open, key).await, 200);
    open.wait_metric("ballast_ratelimit_store_up", &[], 1.0)
        .await;

    redis.stop();
    // fail_open (the default): let through, and say so.
    for _ in 0..4 {
        assert_eq!(call(&open, key).await, 200);
    }
    assert_eq!(open.metric("ballast_ratelimit_store_up", &[]).await, 0.0);
    assert!(
        open.metric(
            "ballast_ratelimit_store_errors_total",
            &[("decision", "allowed")]
        )
        .await
            >= 4.0
    );
    // fail_open = false: 503 with Retry-After.
    let r = closed
        .client
        .get(closed.url("/v1/models"))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "ratelimit_unavailable", "{body}");
    assert!(
        closed
            .metric(
                "ballast_ratelimit_store_errors_total",
                &[("decision", "refused")]
            )
            .await
            >= 1.0
    );

    // Back (empty): counting resumes, and the limit holds again.
    let _redis = Redis::start_on(port).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = call(&open, key).await;
        if open.metric("ballast_ratelimit_store_up", &[]).await == 1.0 && status == 429 {
            break;
        }
        assert!(Instant::now() < deadline, "counting never resumed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        call(&closed, key).await,
        429,
        "the shared count holds for both"
    );
}
