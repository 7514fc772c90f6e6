//! A real Prometheus (Debian's `prometheus`, installed by scripts/test)
//! scrapes the admin listener and sees Ballast's series.

use crate::harness::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Prometheus {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_prometheus(target: &str) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 200ms\nscrape_configs:\n  - job_name: ballast\n    \
             static_configs:\n      - targets: [\"{target}\"]\n"
        ),
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus is installed (scripts/setup installs Debian's package)");
    Prometheus {
        child,
        addr,
        _dir: dir,
    }
}

/// Poll an instant query until it returns a sample whose value is `want`.
async fn wait_query(client: &reqwest::Client, prom: &str, query: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(r) = client
            .get(format!("http://{prom}/api/v1/query"))
            .query(&[("query", query)])
            .send()
            .await
        {
            if let Ok(v) = r.json::<serde_json::Value>().await {
                let result = &v["data"]["result"];
                if result
                    .as_array()
                    .is_some_and(|a| a.iter().any(|s| s["value"][1] == want))
                {
                    return;
                }
                last = v.to_string();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("prometheus query {query} never returned {want}; last answer: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_ballast() {
    let a = sim("a").await;
    let server = a.addr().to_string();
    let gw = Gateway::start(&format!(
        "{}{}",
        pool_toml("p", std::slice::from_ref(&server), ""),
        route_toml("chat", "/", "p", "")
    ))
    .await;
    for _ in 0..3 {
        let r = gw.client.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let prom = start_prometheus(&gw.admin.to_string());
    let client = reqwest::Client::new();
    wait_query(&client, &prom.addr, "up{job=\"ballast\"}", "1").await;
    wait_query(
        &client,
        &prom.addr,
        &format!("ballast_upstream_up{{server=\"{server}\"}}"),
        "1",
    )
    .await;
    wait_query(
        &client,
        &prom.addr,
        "sum(ballast_requests_total{route=\"chat\",status=\"200\"})",
        "3",
    )
    .await;
}
