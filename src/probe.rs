//! `ballast probe`: ask a running gateway's admin listener whether it is
//! alive (`/healthz`) or ready (`/readyz`). It is the container image's
//! `HEALTHCHECK`, which has no curl: the admin address comes from the same
//! config file the gateway runs on.

use anyhow::{bail, Context};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

/// A probe waits this long to connect, and as long again for the answer.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Where to reach an admin listener bound to `listen`: a wildcard address
/// is reached on loopback.
pub fn target(listen: &str) -> anyhow::Result<SocketAddr> {
    let mut addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("admin.listen '{listen}' is not an address"))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Ok(addr)
}

/// The status code of an HTTP/1.x answer, and its body's first line.
pub fn status_of(answer: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(answer);
    let mut parts = text.lines().next()?.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| b.lines().next())
        .unwrap_or("")
        .chars()
        .take(200)
        .collect();
    Some((code, body))
}

/// GET `path` from the admin listener of the gateway configured by
/// `config`: Ok on 200, else why not.
pub fn probe(config: &Path, path: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(config)
        .with_context(|| format!("cannot read config file '{}'", config.display()))?;
    // Only admin.listen is needed: host names in pools are not looked up.
    let unresolved =
        |_: &str, port: u16| Ok(vec![SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), port))]);
    let cfg = crate::config::parse_with(&config.display().to_string(), &text, &unresolved)
        .map_err(|e| anyhow::anyhow!("invalid config:\n{e}"))?;
    let addr = target(&cfg.admin.listen)?;
    let mut conn = TcpStream::connect_timeout(&addr, TIMEOUT)
        .with_context(|| format!("cannot connect to the admin listener at {addr}"))?;
    conn.set_read_timeout(Some(TIMEOUT))?;
    conn.set_write_timeout(Some(TIMEOUT))?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: ballast-probe\r\nConnection: close\r\n\r\n"
    )
    .with_context(|| format!("sending GET {path} to {addr}"))?;
    let mut answer = Vec::new();
    conn.take(16 * 1024)
        .read_to_end(&mut answer)
        .with_context(|| format!("reading the answer to GET {path} from {addr}"))?;
    match status_of(&answer) {
        Some((200, _)) => Ok(()),
        Some((code, body)) => bail!("GET {path} on {addr} answered {code}: {body}"),
        None => bail!("GET {path} on {addr}: no HTTP answer"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_are_reached_on_loopback() {
        assert_eq!(
            target("0.0.0.0:9090").unwrap(),
            "127.0.0.1:9090".parse().unwrap()
        );
        assert_eq!(target("[::]:9090").unwrap(), "[::1]:9090".parse().unwrap());
        assert_eq!(
            target("10.1.2.3:9090").unwrap(),
            "10.1.2.3:9090".parse().unwrap()
        );
        assert!(target("admin:9090").is_err());
    }

    #[test]
    fn reads_the_status_and_the_reason() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";
        assert_eq!(status_of(ok), Some((200, "ok".into())));
        let draining = b"HTTP/1.1 503 Service Unavailable\r\n\r\nshutting down\n";
        assert_eq!(status_of(draining), Some((503, "shutting down".into())));
        assert_eq!(status_of(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_of(b""), None);
    }
}
