//! A real Prometheus (Debian's `prometheus`, installed by scripts/test)
//! scrapes the admin listener, sees Ballast's series, and fires the shipped
//! alert rules (deploy/prometheus/alerts.yml) when a backend fails.

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
    start_prometheus_with_rules(target, None)
}

/// Prometheus scraping `target` every 200 ms and evaluating `rules` (the
/// text of a rule file) as often.
fn start_prometheus_with_rules(target: &str, rules: Option<&str>) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("prometheus.yml");
    let rule_files = match rules {
        Some(text) => {
            std::fs::write(dir.path().join("alerts.yml"), text).unwrap();
            "rule_files:\n  - alerts.yml\n"
        }
        None => "",
    };
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 200ms\n  evaluation_interval: 200ms\n{rule_files}\
             scrape_configs:\n  - job_name: ballast\n    \
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

/// The shipped rules with every `for:` cut to 1 s, so that a test sees
/// them fire in seconds; the expressions are the shipped ones.
fn shipped_rules_for_a_test() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/alerts.yml");
    let text = std::fs::read_to_string(path).expect("deploy/prometheus/alerts.yml");
    let cut: Vec<String> = text
        .lines()
        .map(|line| match line.trim_start().strip_prefix("for: ") {
            Some(_) => format!("{}for: 1s", &line[..line.len() - line.trim_start().len()]),
            None => line.to_string(),
        })
        .collect();
    assert!(
        cut.iter().any(|l| l.ends_with("for: 1s")),
        "rules have for:"
    );
    cut.join("\n")
}

/// Poll `/api/v1/alerts` until `alert` is firing with these labels.
async fn wait_firing(client: &reqwest::Client, prom: &str, alert: &str, labels: &[(&str, &str)]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(r) = client
            .get(format!("http://{prom}/api/v1/alerts"))
            .send()
            .await
        {
            if let Ok(v) = r.json::<serde_json::Value>().await {
                let firing = v["data"]["alerts"].as_array().is_some_and(|a| {
                    a.iter().any(|x| {
                        x["labels"]["alertname"] == alert
                            && x["state"] == "firing"
                            && labels.iter().all(|(k, want)| x["labels"][k] == *want)
                            && x["annotations"]["summary"].is_string()
                            && x["annotations"]["description"].is_string()
                    })
                });
                if firing {
                    return;
                }
                last = v.to_string();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("alert {alert} {labels:?} never fired; last answer: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_alerts_fire_when_a_backend_fails() {
    let failing = sim("failing").await;
    failing.set_fault(status(500));
    let server = failing.addr().to_string();
    let gw = Gateway::start(&format!(
        "{}{}",
        pool_toml(
            "local",
            std::slice::from_ref(&server),
            "max_fails = 1\nfail_timeout = \"60s\"\n"
        ),
        route_toml("chat", "/", "local", "")
    ))
    .await;
    let prom =
        start_prometheus_with_rules(&gw.admin.to_string(), Some(&shipped_rules_for_a_test()));
    let client = reqwest::Client::new();
    wait_query(&client, &prom.addr, "up{job=\"ballast\"}", "1").await;
    // The backend's 500s reach clients (5xx answered) and eject it.
    for _ in 0..5 {
        let r = gw.client.get(gw.url("/v1/models")).send().await.unwrap();
        assert!(r.status().is_server_error(), "{}", r.status());
    }
    assert_eq!(gw.server_status(&server).await["state"], "ejected");
    let instance = gw.admin.to_string();
    wait_firing(
        &client,
        &prom.addr,
        "BallastPoolNoUsableServer",
        &[
            ("pool", "local"),
            ("instance", &instance),
            ("severity", "critical"),
        ],
    )
    .await;
    // Requests keep failing (503 now: nothing usable) while Prometheus
    // watches, since a rate needs two scrapes of a growing counter.
    let traffic = async {
        loop {
            let _ = gw.client.get(gw.url("/v1/models")).send().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        _ = traffic => {}
        _ = wait_firing(&client, &prom.addr, "BallastErrorRateHigh", &[("route", "chat")]) => {}
    }
}

/// Every PromQL expression of the shipped Grafana dashboard (panels,
/// variables, annotations), with its variables filled in.
fn dashboard_queries() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/ballast.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("deploy/grafana/ballast.json"))
            .expect("the dashboard is JSON");
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "definition", serde_json::Value::String(s)) => {
                            out.push(s.clone())
                        }
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dashboard, &mut out);
    out.into_iter()
        .map(|q| {
            // label_values(metric{…}, label) is Grafana's: query the selector.
            let q = match q.strip_prefix("label_values(") {
                Some(rest) => rest[..rest.rfind(',').unwrap_or(rest.len())].to_string(),
                None => q,
            };
            q.replace("$__rate_interval", "1m")
                .replace("$job", ".*")
                .replace("$route", ".*")
                .replace("$pool", ".*")
        })
        .collect()
}

/// Metric names a query reads (histogram series by their family name).
fn metric_names(query: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = query;
    while let Some(i) = rest.find("ballast_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.push(family.to_string());
        rest = &tail[end..];
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_reads_only_metrics_ballast_exports() {
    let a = sim("a").await;
    // Every feature the dashboard shows: client keys, prefix affinity and
    // reported load.
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    let key = "sk-dashboard-test";
    std::fs::write(
        &keys,
        format!(
            "[[key]]\nname = \"team\"\nsha256 = \"{}\"\nrpm = 100\n",
            ballast::keys::hash_hex(key)
        ),
    )
    .unwrap();
    // A job store, and a consumer whose broker is away: their series exist.
    let gw = Gateway::start(&format!(
        "[auth]\nkeys_file = \"{}\"\n\n[jobs]\ndir = \"{}\"\n\n[[amqp]]\nqueue = \"q\"\nurl = \"amqp://{}/%2f\"\n\n{}{}",
        keys.display(),
        dir.path().join("jobs").display(),
        dead_addr(),
        pool_toml(
            "local",
            &[a.addr().to_string()],
            "balance = \"prefix_affinity\"\ncontinuation = \"vllm\"\n[pool.load_metrics]\ninterval = \"100ms\"\n"
        ),
        route_toml(
            "chat",
            "/",
            "local",
            "require_key = true\n[route.jobs]\nenabled = true"
        )
    ))
    .await;
    // One answer of each kind, so that every family has a series.
    let r = gw
        .client
        .get(gw.url("/v1/models"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .body(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, whole) = read_to_end(r.bytes_stream()).await;
    assert!(whole);
    gw.wait_metric_at_least(
        "ballast_load_scrapes_total",
        &[("pool", "local"), ("result", "ok")],
        1.0,
    )
    .await;
    let exported: std::collections::HashSet<String> = gw
        .metrics()
        .await
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    let queries = dashboard_queries();
    assert!(queries.len() > 20, "{queries:?}");
    for q in &queries {
        let names = metric_names(q);
        assert!(
            !names.is_empty() || q == "prometheus",
            "{q} reads no Ballast metric"
        );
        for name in names {
            assert!(
                exported.contains(&name),
                "the dashboard reads {name}, which Ballast does not export ({q})"
            );
        }
    }

    // And each is a query Prometheus accepts.
    let prom = start_prometheus(&gw.admin.to_string());
    let client = reqwest::Client::new();
    wait_query(&client, &prom.addr, "up{job=\"ballast\"}", "1").await;
    for q in queries.iter().filter(|q| q.contains("ballast_")) {
        let v: serde_json::Value = client
            .get(format!("http://{}/api/v1/query", prom.addr))
            .query(&[("query", q.as_str())])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["status"], "success", "Prometheus refused {q}: {v}");
    }
}
