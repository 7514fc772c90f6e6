//! Active health checks: `GET <path>` on every server of a pool every
//! `interval`, each check bounded by `timeout`, all servers concurrently and
//! never on the request path. A 2xx passes; anything else fails. Checks go
//! through Pingora's connector with the server's own peer, so a TLS pool
//! is checked over verified TLS.

use super::{Pool, Server, Transition};
use crate::config::HealthConfig;
use std::sync::Arc;

use crate::redact::Redacted;
use pingora_core::connectors::http::Connector;
use pingora_http::RequestHeader;

/// Run checks for every member of `pool` until the task is dropped; a
/// member that joins is checked at once, one that leaves is no longer.
pub async fn run(pool: Arc<Pool>) {
    let Some(cfg) = pool.health.clone() else {
        return;
    };
    let connector = Arc::new(Connector::new(None));
    pool.per_member(|s| check_loop(connector.clone(), s, cfg.clone(), pool.host.clone()))
        .await;
}

async fn check_loop(
    connector: Arc<Connector>,
    server: Arc<Server>,
    cfg: HealthConfig,
    host: Option<String>,
) {
    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let host = host.unwrap_or_else(|| server.name.clone());
    loop {
        ticker.tick().await;
        let checked = check(&connector, &server, &cfg.path, &host);
        let (passed, why) = match tokio::time::timeout(cfg.timeout, checked).await {
            Ok(Ok(status)) => ((200..300).contains(&status), format!("status {status}")),
            Ok(Err(e)) => {
                tracing::debug!(server = %server.addr, error = %Redacted(&e), "health check failed");
                let why = crate::tls::failure_reason(&e)
                    .map(|r| format!("TLS: {r}"))
                    .unwrap_or_else(|| Redacted(&e).to_string());
                (false, why)
            }
            Err(_) => (false, format!("no answer within {:?}", cfg.timeout)),
        };
        match server.record_health(passed) {
            Transition::WentDown => {
                tracing::warn!(pool = %server.pool, server = %server.addr, last = %why, "health checks failing: server down")
            }
            Transition::CameUp => {
                tracing::info!(pool = %server.pool, server = %server.addr, "health checks passing: server up")
            }
            Transition::None => {}
        }
    }
}

/// One check, through the same connector (TLS, ALPN, HTTP/2) as requests;
/// returns the response status.
async fn check(
    connector: &Connector,
    server: &Server,
    path: &str,
    host: &str,
) -> pingora_error::Result<u16> {
    let (mut session, _) = connector.get_http_session(&*server.peer()).await?;
    let mut req = RequestHeader::build("GET", path.as_bytes(), None)?;
    req.insert_header(http::header::HOST, host)?;
    req.insert_header(http::header::USER_AGENT, "ballast-health-check")?;
    session.write_request_header(Box::new(req)).await?;
    session.finish_request_body().await?;
    loop {
        session.read_response_header().await?;
        match session.response_header().map(|h| h.status.as_u16()) {
            Some(100..=199) => continue,
            Some(status) => return Ok(status),
            None => {
                return pingora_error::Error::e_explain(
                    pingora_error::ErrorType::InvalidHTTPHeader,
                    "no response head",
                )
            }
        }
    }
    // The session is dropped, not pooled: an HTTP/1 connection closes, an
    // HTTP/2 one stays for the next check and the requests.
}
