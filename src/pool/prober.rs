//! Active health checks: `GET <path>` on every server of a pool every
//! `interval`, each check bounded by `timeout`, all servers concurrently and
//! never on the request path. A 2xx passes; anything else fails.

use super::{Pool, Server, Transition};
use crate::config::HealthConfig;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Run checks for every server of `pool` until the task is dropped.
pub async fn run(pool: Arc<Pool>) {
    let Some(cfg) = pool.health.clone() else {
        return;
    };
    let tasks: Vec<_> = pool
        .servers
        .iter()
        .map(|s| tokio::spawn(check_loop(s.clone(), cfg.clone(), pool.host.clone())))
        .collect();
    for t in tasks {
        // A check loop only ends by cancellation.
        let _ = t.await;
    }
}

async fn check_loop(server: Arc<Server>, cfg: HealthConfig, host: Option<String>) {
    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let host = host.unwrap_or_else(|| server.addr.clone());
    loop {
        ticker.tick().await;
        let passed = match tokio::time::timeout(cfg.timeout, check(&server, &cfg.path, &host)).await
        {
            Ok(Ok(status)) => (200..300).contains(&status),
            Ok(Err(e)) => {
                tracing::debug!(server = %server.addr, error = %e, "health check failed");
                false
            }
            Err(_) => false,
        };
        match server.record_health(passed) {
            Transition::WentDown => {
                tracing::warn!(pool = %server.pool, server = %server.addr, "health checks failing: server down")
            }
            Transition::CameUp => {
                tracing::info!(pool = %server.pool, server = %server.addr, "health checks passing: server up")
            }
            Transition::None => {}
        }
    }
}

/// One check on a fresh connection; returns the response status.
async fn check(server: &Server, path: &str, host: &str) -> std::io::Result<u16> {
    let mut conn = TcpStream::connect(server.socket).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ballast-health-check\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(req.as_bytes()).await?;
    let mut buf = [0u8; 64];
    let mut len = 0;
    // The status line's first 12 bytes ("HTTP/1.1 200") are all we need.
    while len < 12 {
        let n = conn.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
    }
    parse_status(&buf[..len])
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP status line"))
}

fn parse_status(head: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(head).ok()?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.get(..3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parse_status;

    #[test]
    fn parses_status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 Service"), Some(503));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status(b"HTTP/1.1 2"), None);
        assert_eq!(parse_status(b""), None);
    }
}
