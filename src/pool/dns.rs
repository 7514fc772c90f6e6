//! Host names in `pool.servers.addr` are looked up again while the gateway
//! runs (every `resolve_interval`, sooner when the record's TTL runs out),
//! and every address a name resolves to is a member of the pool: new ones
//! join, vanished ones drain and are removed once their requests end. A
//! failed lookup keeps the last good addresses. Lookups go through
//! hickory's resolver, never the blocking system call on a worker.

use super::Pool;
use crate::config::ServerSection;
use crate::metrics;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, NameServerConfigGroup, ResolverConfig,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Longest wait for one lookup.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// A record's TTL never makes lookups more frequent than this.
const MIN_TTL: Duration = Duration::from_secs(1);

/// The resolver for the whole gateway: `server.resolver`'s name servers,
/// or the system's configuration.
pub fn resolver(server: &ServerSection) -> anyhow::Result<TokioResolver> {
    let mut builder = if server.resolver.is_empty() {
        TokioResolver::builder_tokio()
            .map_err(|e| anyhow::anyhow!("cannot read the system's resolver configuration: {e}"))?
    } else {
        let mut group = NameServerConfigGroup::new();
        for addr in &server.resolver {
            group.push(NameServerConfig::new(*addr, Protocol::Udp));
            group.push(NameServerConfig::new(*addr, Protocol::Tcp));
        }
        TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, vec![], group),
            TokioConnectionProvider::default(),
        )
    };
    let options = builder.options_mut();
    // IPv4 addresses when the name has any, else IPv6: as at start-up.
    options.ip_strategy = LookupIpStrategy::Ipv4thenIpv6;
    options.timeout = Duration::from_secs(2);
    options.attempts = 2;
    Ok(builder.build())
}

/// Keep the members of `pool` in step with DNS until the task is dropped.
pub async fn run(pool: Arc<Pool>, resolver: Arc<TokioResolver>) {
    let names: Vec<usize> = pool
        .config()
        .servers
        .iter()
        .enumerate()
        .filter(|(_, s)| s.is_name)
        .map(|(i, _)| i)
        .collect();
    if names.is_empty() {
        return;
    }
    let interval = pool.config().resolve_interval;
    loop {
        let mut next = interval;
        for &entry in &names {
            if let Some(ttl) = refresh(&pool, &resolver, entry).await {
                next = next.min(ttl.max(MIN_TTL));
            }
        }
        let due = Instant::now() + next;
        tokio::time::sleep_until(due).await;
    }
}

/// Look one configured server's name up and apply the answer; the
/// answer's remaining TTL when it worked.
async fn refresh(pool: &Pool, resolver: &TokioResolver, entry: usize) -> Option<Duration> {
    let cfg = &pool.config().servers[entry];
    let looked = tokio::time::timeout(LOOKUP_TIMEOUT, resolver.lookup_ip(cfg.host.as_str())).await;
    let lookup = match looked {
        Ok(Ok(lookup)) => lookup,
        Ok(Err(e)) => {
            failed(pool, &cfg.addr, &e.to_string());
            return None;
        }
        Err(_) => {
            failed(pool, &cfg.addr, "no answer in time");
            return None;
        }
    };
    let mut addrs: Vec<SocketAddr> = lookup
        .iter()
        .map(|ip| SocketAddr::new(ip, cfg.port))
        .collect();
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        failed(pool, &cfg.addr, "no addresses in the answer");
        return None;
    }
    metrics::dns_resolution(&pool.name, "ok");
    let change = pool.set_addresses(entry, &addrs);
    for added in &change.added {
        tracing::info!(pool = %pool.name, server = %added, "new address from DNS: server added");
    }
    for drained in &change.drained {
        tracing::info!(pool = %pool.name, server = %drained, "address gone from DNS: server draining");
    }
    let ttl = lookup
        .valid_until()
        .saturating_duration_since(std::time::Instant::now());
    Some(ttl)
}

fn failed(pool: &Pool, name: &str, why: &str) {
    metrics::dns_resolution(&pool.name, "error");
    tracing::warn!(
        pool = %pool.name,
        server = %name,
        error = %why,
        "DNS lookup failed; keeping the last good addresses"
    );
}
