//! Load the servers report about themselves (`[pool.load_metrics]`): every
//! `interval`, each member's Prometheus endpoint is read and the running
//! and waiting requests it reports (summed over label sets, e.g. models)
//! are kept for selection. A failed scrape never takes a server out; its
//! last report simply ages past `max_age` and stops counting.

use super::server::Reported;
use super::{Pool, Server};
use crate::config::LoadMetricsConfig;
use crate::redact::Redacted;
use pingora_core::connectors::http::Connector;
use pingora_http::RequestHeader;
use std::sync::Arc;
use std::time::Instant;

/// Longest metrics page read.
const MAX_PAGE: usize = 4 * 1024 * 1024;

/// Scrape every member of `pool` until the task is dropped; members that
/// join are scraped at once, those that leave no longer.
pub async fn run(pool: Arc<Pool>) {
    let Some(cfg) = pool.config().load_metrics.clone() else {
        return;
    };
    let connector = Arc::new(Connector::new(None));
    pool.per_member(|s| scrape_loop(connector.clone(), s, cfg.clone(), pool.host.clone()))
        .await;
}

async fn scrape_loop(
    connector: Arc<Connector>,
    server: Arc<Server>,
    cfg: LoadMetricsConfig,
    host: Option<String>,
) {
    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let host = host.unwrap_or_else(|| server.name.clone());
    loop {
        ticker.tick().await;
        let page =
            tokio::time::timeout(cfg.interval, fetch(&connector, &server, &cfg.path, &host)).await;
        match page {
            Ok(Ok(text)) => match parse(&text, &cfg, Instant::now()) {
                Some(report) => {
                    crate::metrics::load_scrape(&server.pool, "ok");
                    server.report_load(report);
                }
                None => {
                    crate::metrics::load_scrape(&server.pool, "missing");
                    tracing::debug!(server = %server.addr, "metrics page lacks the load metrics");
                }
            },
            Ok(Err(e)) => {
                crate::metrics::load_scrape(&server.pool, "error");
                tracing::debug!(server = %server.addr, error = %e, "load metrics scrape failed");
            }
            Err(_) => {
                crate::metrics::load_scrape(&server.pool, "error");
                tracing::debug!(server = %server.addr, "load metrics scrape timed out");
            }
        }
    }
}

/// GET the metrics page through the pool's own connector (TLS as for
/// requests).
async fn fetch(
    connector: &Connector,
    server: &Server,
    path: &str,
    host: &str,
) -> Result<String, String> {
    let err = |e: Box<pingora_error::Error>| Redacted(&e).to_string();
    let (mut session, _) = connector
        .get_http_session(&*server.peer())
        .await
        .map_err(err)?;
    let mut req = RequestHeader::build("GET", path.as_bytes(), None).map_err(err)?;
    req.insert_header(http::header::HOST, host).map_err(err)?;
    req.insert_header(http::header::USER_AGENT, "ballast-load-metrics")
        .map_err(err)?;
    session
        .write_request_header(Box::new(req))
        .await
        .map_err(err)?;
    session.finish_request_body().await.map_err(err)?;
    session.read_response_header().await.map_err(err)?;
    let status = session.response_header().map_or(0, |h| h.status.as_u16());
    if status != 200 {
        return Err(format!("status {status}"));
    }
    let mut page = Vec::new();
    while let Some(chunk) = session.read_response_body().await.map_err(err)? {
        page.extend_from_slice(&chunk);
        if page.len() > MAX_PAGE {
            return Err("metrics page too large".into());
        }
    }
    Ok(String::from_utf8_lossy(&page).into_owned())
}

/// The report in a Prometheus text page: each configured metric summed
/// over its series; `None` when the page has neither running nor waiting.
pub fn parse(text: &str, cfg: &LoadMetricsConfig, at: Instant) -> Option<Reported> {
    let mut sums: [Option<f64>; 3] = [None; 3];
    let names = [&cfg.running, &cfg.waiting, &cfg.kv_usage];
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let Some(k) = names.iter().position(|n| **n == line[..name_end]) else {
            continue;
        };
        // The value follows the labels (which may hold spaces in quotes).
        let after = match line[name_end..].starts_with('{') {
            true => line.rfind('}').map_or("", |i| &line[i + 1..]),
            false => &line[name_end..],
        };
        let Some(value) = after
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        if value.is_finite() {
            *sums[k].get_or_insert(0.0) += value;
        }
    }
    let [running, waiting, kv_usage] = sums;
    if running.is_none() && waiting.is_none() {
        return None;
    }
    Some(Reported {
        running: running.unwrap_or(0.0),
        waiting: waiting.unwrap_or(0.0),
        kv_usage,
        at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg() -> LoadMetricsConfig {
        LoadMetricsConfig {
            path: "/metrics".into(),
            interval: Duration::from_secs(1),
            max_age: Duration::from_secs(3),
            running: "vllm:num_requests_running".into(),
            waiting: "vllm:num_requests_waiting".into(),
            kv_usage: "vllm:kv_cache_usage_perc".into(),
        }
    }

    #[test]
    fn reads_vllms_page_summing_models() {
        let page = "# HELP vllm:num_requests_running Number of requests running.\n\
            # TYPE vllm:num_requests_running gauge\n\
            vllm:num_requests_running{model_name=\"a b\"} 3.0\n\
            vllm:num_requests_running{model_name=\"c\"} 2\n\
            vllm:num_requests_waiting{model_name=\"a b\"} 7 1700000000000\n\
            vllm:num_requests_waiting_other 100\n\
            vllm:kv_cache_usage_perc{model_name=\"a b\"} 0.25\n";
        let at = Instant::now();
        let r = parse(page, &cfg(), at).unwrap();
        assert_eq!((r.running, r.waiting, r.kv_usage), (5.0, 7.0, Some(0.25)));
        assert_eq!(parse("other_metric 1\n", &cfg(), at), None);
        assert_eq!(parse("vllm:num_requests_waiting NaN\n", &cfg(), at), None);
        let sglang = LoadMetricsConfig {
            running: "sglang:num_running_reqs".into(),
            waiting: "sglang:num_queue_reqs".into(),
            ..cfg()
        };
        let r = parse("sglang:num_queue_reqs{name=\"x\"} 4\n", &sglang, at).unwrap();
        assert_eq!((r.running, r.waiting), (0.0, 4.0));
    }
}
