//! One generation of the running configuration: the config it came from,
//! its route table, the retry budget of each route and its pools. Requests
//! take the current generation when they start and keep it to their end;
//! a reload builds the next generation and swaps it in whole.

use crate::config::{Config, PoolConfig};
use crate::metrics;
use crate::pool::Pool;
use crate::retry::RetryBudget;
use crate::route::RouteTable;
use anyhow::Context;
use arc_swap::ArcSwap;
use http::HeaderValue;
use serde::Serialize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

pub struct Generation {
    /// 1 for the config the process started with, then one more per reload.
    pub number: u64,
    pub config: Arc<Config>,
    pub routes: RouteTable,
    /// Per route, in config order.
    budgets: Vec<Arc<Mutex<RetryBudget>>>,
    pub pools: Vec<Arc<Pool>>,
    /// Pools a reload removed, until their last request ends.
    pub retired: Vec<Arc<Pool>>,
}

/// What a reload changed, as the reload answer and the log say it.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Changes {
    pub generation: u64,
    pub pools_added: Vec<String>,
    pub pools_removed: Vec<String>,
    /// `pool/server` labels.
    pub servers_added: Vec<String>,
    pub servers_removed: Vec<String>,
    pub routes_added: Vec<String>,
    pub routes_removed: Vec<String>,
    /// Keys whose new value only a restart can apply; the old value stays.
    pub needs_restart: Vec<String>,
}

/// The generation in force, shared by every part that serves.
pub type Current = Arc<ArcSwap<Generation>>;

impl Generation {
    /// The first generation, from the config the process started with.
    pub fn first(config: Arc<Config>, pools: Vec<Arc<Pool>>) -> Generation {
        let now = Instant::now();
        for r in &config.routes {
            metrics::register_route(&r.name);
        }
        register_keys(&config);
        Generation {
            number: 1,
            routes: RouteTable::new(&config.routes),
            budgets: config
                .routes
                .iter()
                .map(|r| Arc::new(Mutex::new(RetryBudget::new(r.retry.budget, now))))
                .collect(),
            config,
            pools,
            retired: Vec::new(),
        }
    }

    /// The generation after this one, for `config`: pools and routes that
    /// stay carry their state over (see `Pool::next`), the others are
    /// built new or retired. Keys that need a restart keep their old value.
    pub fn next(&self, mut config: Config) -> anyhow::Result<(Generation, Changes)> {
        let mut changes = Changes {
            generation: self.number + 1,
            needs_restart: keep_restart_only(&self.config, &mut config),
            ..Changes::default()
        };
        let mut pools = Vec::with_capacity(config.pools.len());
        for cfg in &config.pools {
            let (credential, tls) = pool_material(cfg)?;
            let pool = match self.pools.iter().find(|p| p.name == cfg.name) {
                Some(previous) => {
                    let (pool, moved) = Pool::next(cfg, credential, tls, previous);
                    if pool.routes_by_prefix() || cfg.affinity_header.is_some() {
                        metrics::register_affinity(&cfg.name);
                    }
                    let label = |s: String| format!("{}/{s}", cfg.name);
                    changes
                        .servers_added
                        .extend(moved.added.into_iter().map(label));
                    changes
                        .servers_removed
                        .extend(moved.drained.into_iter().map(label));
                    pool
                }
                None => {
                    changes.pools_added.push(cfg.name.clone());
                    new_pool(cfg, credential, tls)
                }
            };
            pools.push(Arc::new(pool));
        }
        let mut retired: Vec<Arc<Pool>> = self
            .retired
            .iter()
            .filter(|p| !p.is_idle())
            .cloned()
            .collect();
        for old in &self.pools {
            if !config.pools.iter().any(|p| p.name == old.name) {
                old.retire();
                changes.pools_removed.push(old.name.clone());
                retired.push(old.clone());
            }
        }
        let now = Instant::now();
        let budgets = config
            .routes
            .iter()
            .map(
                |r| match self.config.routes.iter().position(|o| o.name == r.name) {
                    Some(i) => {
                        let budget = self.budgets[i].clone();
                        budget
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .set_ratio(r.retry.budget);
                        budget
                    }
                    None => {
                        metrics::register_route(&r.name);
                        changes.routes_added.push(r.name.clone());
                        Arc::new(Mutex::new(RetryBudget::new(r.retry.budget, now)))
                    }
                },
            )
            .collect();
        changes.routes_removed = self
            .config
            .routes
            .iter()
            .filter(|o| !config.routes.iter().any(|r| r.name == o.name))
            .map(|o| o.name.clone())
            .collect();
        register_keys(&config);
        let next = Generation {
            number: self.number + 1,
            routes: RouteTable::new(&config.routes),
            budgets,
            config: Arc::new(config),
            pools,
            retired,
        };
        Ok((next, changes))
    }

    pub fn into_current(self) -> Current {
        Arc::new(ArcSwap::from_pointee(self))
    }

    /// The retry budget of route `route_idx`.
    pub fn budget(&self, route_idx: usize) -> MutexGuard<'_, RetryBudget> {
        self.budgets[route_idx]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Client keys' usage series, at zero from the start.
/// Routes' job series too.
fn register_keys(config: &Config) {
    for name in config.auth.iter().flat_map(|a| a.keys.names()) {
        metrics::register_key(name);
    }
    for r in config.routes.iter().filter(|r| r.jobs.is_some()) {
        metrics::register_job_route(&r.name);
    }
}

/// Build every pool of a config (the first generation).
pub fn build_pools(config: &Config) -> anyhow::Result<Vec<Arc<Pool>>> {
    config
        .pools
        .iter()
        .map(|cfg| {
            let (credential, tls) = pool_material(cfg)?;
            Ok(Arc::new(new_pool(cfg, credential, tls)))
        })
        .collect()
}

fn new_pool(
    cfg: &PoolConfig,
    credential: Option<HeaderValue>,
    tls: Option<Arc<crate::tls::UpstreamTls>>,
) -> Pool {
    metrics::register_pool(&cfg.name);
    let pool = Pool::new(cfg, credential, tls);
    if pool.routes_by_prefix() || cfg.affinity_header.is_some() {
        metrics::register_affinity(&cfg.name);
    }
    if cfg.continuation != crate::openai::continuation::Dialect::None {
        metrics::register_resumes(&cfg.name);
    }
    for s in pool.servers().iter() {
        metrics::register_server(&cfg.name, &s.addr);
    }
    pool
}

/// A pool's credential from the environment and its TLS material from
/// files (both checked by config load, read again here).
fn pool_material(
    cfg: &PoolConfig,
) -> anyhow::Result<(Option<HeaderValue>, Option<Arc<crate::tls::UpstreamTls>>)> {
    let credential = match &cfg.api_key_env {
        Some(var) => Some(pool_credential(&cfg.name, var, &cfg.api_key_header)?),
        None => None,
    };
    let tls = crate::tls::UpstreamTls::load(cfg, SystemTime::now())
        .map_err(|e| anyhow::anyhow!("pool '{}': {e}", cfg.name))?;
    Ok((credential, tls.map(Arc::new)))
}

/// The value of the pool's key header from the environment variable `var`
/// (`Bearer <key>` in `Authorization`, the bare key in any other header),
/// marked sensitive. Errors name the pool and the variable, never the value.
fn pool_credential(
    pool: &str,
    var: &str,
    header: &http::HeaderName,
) -> anyhow::Result<HeaderValue> {
    let key = std::env::var(var)
        .with_context(|| format!("pool '{pool}': api_key_env {var} is not set"))?;
    let text = if header == http::header::AUTHORIZATION {
        format!("Bearer {}", key.trim())
    } else {
        key.trim().to_owned()
    };
    let mut value = HeaderValue::from_str(&text).map_err(|_| {
        anyhow::anyhow!("pool '{pool}': api_key_env {var} holds characters a header cannot carry")
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Put back in `new` the settings only a restart can change (listeners,
/// threads, TLS certificate, resolver, logging, connection settings read
/// once at start), and name those that differed.
fn keep_restart_only(old: &Config, new: &mut Config) -> Vec<String> {
    let mut kept = Vec::new();
    macro_rules! keep {
        ($($field:ident).+, $key:expr) => {
            if old.$($field).+ != new.$($field).+ {
                new.$($field).+ = old.$($field).+.clone();
                kept.push($key.to_string());
            }
        };
    }
    keep!(server.listen, "server.listen");
    keep!(server.threads, "server.threads");
    keep!(server.upgrade_sock, "server.upgrade_sock");
    keep!(server.tls, "server.tls");
    keep!(server.resolver, "server.resolver");
    keep!(admin.listen, "admin.listen");
    keep!(log, "log");
    keep!(limits.keepalive_idle, "limits.keepalive_idle");
    keep!(limits.max_buffered_bytes, "limits.max_buffered_bytes");
    keep!(ratelimit, "ratelimit");
    keep!(jobs, "jobs");
    keep!(amqp, "amqp");
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        crate::config::parse_with("t.toml", text, &|_, _| Ok(Vec::new())).unwrap()
    }

    const BASE: &str = r#"
[server]
listen = ["127.0.0.1:8080"]
threads = 2
[[pool]]
name = "a"
max_fails = 1
fail_timeout = "10s"
[[pool.servers]]
addr = "127.0.0.1:9001"
[[pool.servers]]
addr = "127.0.0.1:9002"
[[route]]
name = "r"
pool = "a"
"#;

    #[test]
    fn a_reload_carries_the_state_of_servers_that_stay() {
        let first = Generation::first(Arc::new(config(BASE)), build_pools(&config(BASE)).unwrap());
        let t0 = Instant::now();
        let stays = first.pools[0].servers()[0].clone();
        let leaves = first.pools[0].servers()[1].clone();
        stays.record(true, t0); // ejected (max_fails = 1)
        let held = first.pools[0].acquire(t0, &[]).unwrap(); // on the other one
        assert_eq!(held.id(), leaves.id);
        first.budget(0).record_first(t0);

        let text = BASE
            .replace("127.0.0.1:9002", "127.0.0.1:9003")
            .replace(
                "listen = [\"127.0.0.1:8080\"]",
                "listen = [\"127.0.0.1:8081\"]",
            )
            .replace(
                "fail_timeout = \"10s\"",
                "fail_timeout = \"10s\"\n[pool.queue]\nmax_wait = \"3s\"",
            );
        let (next, changes) = first.next(config(&text)).unwrap();
        assert_eq!(next.number, 2);
        assert_eq!(changes.servers_added, ["a/127.0.0.1:9003"]);
        assert_eq!(changes.servers_removed, ["a/127.0.0.1:9002"]);
        assert_eq!(changes.needs_restart, ["server.listen"]);
        // The listener in force is still the old one.
        assert_eq!(next.config.server.listen, ["127.0.0.1:8080"]);

        let pool = &next.pools[0];
        let carried = &pool.servers()[0];
        // The same server, still ejected.
        assert!(Arc::ptr_eq(carried, &stays));
        assert!(matches!(
            carried.availability(t0),
            crate::pool::Availability::Ejected { .. }
        ));
        // The queue is the old one, with the new settings.
        assert!(Arc::ptr_eq(&pool.admission, &first.pools[0].admission));
        assert_eq!(pool.admission.max_wait(), std::time::Duration::from_secs(3));
        // The removed server drains, its request still counted, then goes.
        assert!(leaves.is_draining());
        assert_eq!(pool.snapshot(t0).servers.len(), 3);
        drop(held);
        assert_eq!(pool.sweep_drained(), ["127.0.0.1:9002"]);
        // The route's retry budget is the same one.
        assert!(Arc::ptr_eq(&next.budgets[0], &first.budgets[0]));
    }

    #[test]
    fn pools_and_routes_come_and_go() {
        let first = Generation::first(Arc::new(config(BASE)), build_pools(&config(BASE)).unwrap());
        let text = BASE
            .replace("name = \"a\"", "name = \"b\"")
            .replace("name = \"r\"\npool = \"a\"", "name = \"s\"\npool = \"b\"");
        let (next, changes) = first.next(config(&text)).unwrap();
        assert_eq!(changes.pools_added, ["b"]);
        assert_eq!(changes.pools_removed, ["a"]);
        assert_eq!(changes.routes_added, ["s"]);
        assert_eq!(changes.routes_removed, ["r"]);
        assert_eq!(next.retired.len(), 1);
        assert!(next.retired[0].servers().is_empty());
        // Nothing was in flight: the retired pool empties at the first sweep.
        next.retired[0].sweep_drained();
        assert!(next.retired[0].is_idle());
    }
}
