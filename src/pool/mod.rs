//! A pool of backend servers: who is usable, who has the least outstanding
//! work, and the leases that count that work. Its members change while it
//! runs (a host name's addresses come and go): they are swapped as a
//! whole, and each keeps its own state for as long as it stays.

mod admission;
mod carry;
pub mod dns;
mod eject;
mod health;
mod lease;
pub mod load_report;
mod members;
pub mod prefix;
pub mod prober;
mod select;
mod server;
mod tally;

pub use admission::{Admission, Shed, Waiting};
pub use eject::{Ejection, Gate};
pub use health::{HealthState, Transition};
pub use lease::Lease;
pub use select::{pick, pick_preferring, Affinity, Candidate, Leeway};
pub use server::{Availability, Server, ServerStatus};
pub use tally::{Tally, TallyStatus};

use crate::config::{AffinityConfig, Balance, HealthConfig, PoolConfig};
use crate::metrics;
use crate::tls::UpstreamTls;
use arc_swap::ArcSwap;
use http::HeaderValue;
use prefix::{PrefixStore, PromptChain};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Serialize)]
pub struct PoolStatus {
    pub name: String,
    /// The servers are reached over TLS.
    pub tls: bool,
    /// Requests waiting for a server under its `max_conns`.
    pub queue_depth: usize,
    /// The queue's `max_depth` (0: no queue).
    pub queue_max_depth: usize,
    /// Prompt blocks remembered, with prefix affinity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix_blocks: Option<usize>,
    /// Requests that left the queue: `failed` were shed, the others got a
    /// server after waiting `time_sum_seconds` in all.
    pub queue: TallyStatus,
    /// Members, then those draining (gone from DNS, requests in flight).
    pub servers: Vec<ServerStatus>,
}

pub struct Pool {
    pub name: String,
    /// Where requests wait when every usable server is at `max_conns`.
    pub admission: Arc<Admission>,
    /// `Host` header sent upstream; `None` keeps the client's.
    pub host: Option<String>,
    /// What every request to this pool (and no other) carries: its `Host`
    /// and its own credential.
    pub upstream_headers: PoolHeaders,
    pub health: Option<HealthConfig>,
    /// The servers are reached over TLS.
    pub tls: bool,
    config: PoolConfig,
    tls_material: Option<Arc<UpstreamTls>>,
    /// The members requests are sent to, swapped as a whole.
    members: ArcSwap<Vec<Arc<Server>>>,
    /// Members that left, until their last request ends.
    draining: Mutex<Vec<Arc<Server>>>,
    /// Bumped on every change of members (the prober follows it).
    changed: tokio::sync::watch::Sender<u64>,
    /// With `balance = "prefix_affinity"`: its settings and which server
    /// last served which prompt prefix (carried over a reload).
    affinity: Option<(AffinityConfig, Arc<PrefixStore>)>,
}

/// The headers a pool sets on every request it is sent.
#[derive(Debug, Clone, Default)]
pub struct PoolHeaders {
    /// `Host`; `None` keeps the client's.
    pub host: Option<HeaderValue>,
    /// The pool's key, in its header (`Authorization: Bearer …` unless
    /// `api_key_header` says otherwise); `None` injects nothing.
    pub credential: Option<(http::HeaderName, HeaderValue)>,
}

impl PoolHeaders {
    fn new(cfg: &PoolConfig, credential: Option<HeaderValue>) -> Self {
        PoolHeaders {
            // Checked by config validation; an invalid one cannot get here.
            host: cfg
                .host
                .as_deref()
                .and_then(|h| HeaderValue::from_str(h).ok()),
            credential: credential.map(|v| (cfg.api_key_header.clone(), v)),
        }
    }
}

/// The tasks of a pool's members (`Pool::per_member`), ended with it.
struct MemberTasks(std::collections::HashMap<u64, tokio::task::JoinHandle<()>>);

impl Drop for MemberTasks {
    fn drop(&mut self) {
        for task in self.0.values() {
            task.abort();
        }
    }
}

/// A server's rank for a session (highest wins).
fn rendezvous(session: &[u8], server: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    session.hash(&mut h);
    server.hash(&mut h);
    h.finish()
}

/// Why no server could be leased.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoServer {
    /// Best estimate of when one can take requests again.
    pub retry_after: Duration,
    /// Some server is usable but at its `max_conns`: worth queueing for.
    pub at_capacity: bool,
}

/// What a change of a name's addresses did to the pool's members.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MemberChange {
    pub added: Vec<String>,
    pub drained: Vec<String>,
}

impl Pool {
    /// `credential` is the pool's key in its header, already marked
    /// sensitive so that no `Debug` of a header map shows it.
    /// `tls` is the pool's loaded TLS material (`None` for a plain pool).
    pub fn new(
        cfg: &PoolConfig,
        credential: Option<HeaderValue>,
        tls: Option<Arc<UpstreamTls>>,
    ) -> Self {
        let admission = Arc::new(Admission::new(&cfg.name, &cfg.queue, Instant::now()));
        let members = cfg
            .servers
            .iter()
            .enumerate()
            .flat_map(|(entry, s)| s.resolved.iter().map(move |a| (entry, *a)))
            .map(|(entry, socket)| {
                Arc::new(Server::new(
                    cfg,
                    &cfg.servers[entry],
                    entry,
                    socket,
                    admission.clone(),
                    tls.as_deref(),
                    false,
                ))
            })
            .collect();
        Pool::assemble(cfg, credential, tls, admission, members, Vec::new(), None)
    }

    /// A pool of `cfg` with these members (new, or carried over a reload).
    fn assemble(
        cfg: &PoolConfig,
        credential: Option<HeaderValue>,
        tls: Option<Arc<UpstreamTls>>,
        admission: Arc<Admission>,
        members: Vec<Arc<Server>>,
        draining: Vec<Arc<Server>>,
        previous: Option<&Pool>,
    ) -> Pool {
        let affinity = match &cfg.balance {
            Balance::LeastOutstanding => None,
            Balance::PrefixAffinity(a) => {
                // What the servers hold survives a reload of the same size.
                let kept = previous
                    .and_then(|p| p.affinity.as_ref())
                    .filter(|(old, _)| old.entries == a.entries)
                    .map(|(_, store)| store.clone());
                Some((
                    a.clone(),
                    kept.unwrap_or_else(|| Arc::new(PrefixStore::new(a.entries))),
                ))
            }
        };
        Pool {
            name: cfg.name.clone(),
            admission,
            host: cfg.host.clone(),
            upstream_headers: PoolHeaders::new(cfg, credential),
            health: cfg.health.clone(),
            tls: tls.is_some(),
            config: cfg.clone(),
            tls_material: tls,
            members: ArcSwap::from_pointee(members),
            draining: Mutex::new(draining),
            changed: tokio::sync::watch::channel(0).0,
            affinity,
        }
    }

    /// Blocks of prompt prefixes remembered (prefix affinity only).
    pub fn prefix_blocks(&self) -> Option<usize> {
        self.affinity.as_ref().map(|(_, store)| store.len())
    }

    /// Whether requests to this pool are routed by their prompt prefix.
    pub fn routes_by_prefix(&self) -> bool {
        self.affinity.is_some()
    }

    /// The members now (a snapshot: later changes do not show in it).
    pub fn servers(&self) -> Arc<Vec<Arc<Server>>> {
        self.members.load_full()
    }

    /// The configured servers (entries of `servers`) this pool is made of.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// Follows changes of members.
    pub fn watch_members(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Run `task(member)` for every member until this future is dropped: a
    /// member that joins gets its task at once, one that leaves loses it.
    /// (Health checks and load scrapes are such per-member loops.)
    pub async fn per_member<F, Fut>(&self, task: F)
    where
        F: Fn(Arc<Server>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut changes = self.watch_members();
        let mut tasks = MemberTasks(std::collections::HashMap::new());
        loop {
            let members = self.servers();
            tasks.0.retain(|id, t| {
                let stays = members.iter().any(|s| s.id == *id);
                if !stays {
                    t.abort();
                }
                stays
            });
            for s in members.iter() {
                tasks
                    .0
                    .entry(s.id)
                    .or_insert_with(|| tokio::spawn(task(s.clone())));
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    fn draining(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Server>>> {
        self.draining
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Configured server `entry` now resolves to `addrs`: members for new
    /// addresses join (unchecked, if the pool has health checks), members
    /// whose address vanished drain. An empty answer changes nothing (the
    /// last good addresses stay).
    pub fn set_addresses(&self, entry: usize, addrs: &[SocketAddr]) -> MemberChange {
        let Some(cfg) = self.config.servers.get(entry) else {
            return MemberChange::default();
        };
        // Held across the swap: `for_each_server` sees a member either
        // among the members or among the draining, never in between.
        let mut draining = self.draining();
        let current = self.servers();
        let now: Vec<(usize, SocketAddr)> = current.iter().map(|s| (s.entry(), s.socket)).collect();
        let plan = members::plan(&now, entry, addrs);
        if plan.is_empty() {
            return MemberChange::default();
        }
        let mut change = MemberChange::default();
        let mut next: Vec<Arc<Server>> = Vec::with_capacity(current.len() + plan.add.len());
        for (i, s) in current.iter().enumerate() {
            if plan.drain.contains(&i) {
                s.drain();
                change.drained.push(s.addr.clone());
                draining.push(s.clone());
            } else {
                next.push(s.clone());
            }
        }
        for socket in plan.add {
            let s = Arc::new(Server::new(
                &self.config,
                cfg,
                entry,
                socket,
                self.admission.clone(),
                self.tls_material.as_deref(),
                true,
            ));
            metrics::register_server(&self.name, &s.addr);
            change.added.push(s.addr.clone());
            next.push(s);
        }
        self.members.store(Arc::new(next));
        drop(draining);
        self.changed.send_modify(|n| *n += 1);
        change
    }

    /// Forget drained members whose last request has ended (and their
    /// metric series); returns their labels.
    pub fn sweep_drained(&self) -> Vec<String> {
        let members = self.servers();
        // Under the lock: a scrape (`for_each_draining`) cannot set a
        // series again after it is removed.
        let mut draining = self.draining();
        let mut gone = Vec::new();
        let mut gone_ids = Vec::new();
        draining.retain(|s| {
            let idle = s.outstanding() == 0;
            if idle {
                gone.push(s.addr.clone());
                gone_ids.push(s.id);
            }
            !idle
        });
        // Prompts it served are nobody's now.
        if let Some((_, store)) = &self.affinity {
            for id in gone_ids {
                store.forget(id);
            }
        }
        for label in &gone {
            // A member of another entry may carry the same label (the same
            // name listed twice resolves alike): keep its series then.
            if !members.iter().any(|s| &s.addr == label) {
                metrics::remove_server(&self.name, label);
            }
        }
        gone
    }

    /// Run `f` on every member, then on every draining one, while no
    /// member can leave or be swept (a scrape never brings back the series
    /// of a member already gone).
    pub fn for_each_server(&self, mut f: impl FnMut(&Server)) {
        let draining = self.draining();
        for s in self.members.load().iter().chain(draining.iter()) {
            f(s);
        }
    }

    /// Give the queue the capacity that is free at `now` (a server may have
    /// come back without a slot being freed), and the probe of a server
    /// whose ejection is over. A finishing request hands its slot to the
    /// queue, but a probe is never handed on that way: while requests
    /// queue, new ones join behind them instead of leasing, so the probe
    /// must be given to the queue here or the server never comes back.
    pub fn feed_queue(&self, now: Instant) {
        while self.admission.has_waiters() {
            let Ok(lease) = self.acquire(now, &[]) else {
                return;
            };
            if lease.is_probe() {
                // To the head of the queue; back when nobody waits after
                // all, and then freed (the loop ends: no waiters).
                drop(self.admission.hand_off(lease));
            } else {
                // Dropping a lease hands its slot to the head of the queue.
                drop(lease);
            }
        }
    }

    /// Lease the best usable server, preferring ones not in `tried`
    /// (server ids).
    pub fn acquire(&self, now: Instant, tried: &[u64]) -> Result<Lease, NoServer> {
        self.acquire_for(now, tried, false, None, None)
    }

    /// The session a request belongs to (`affinity_header`), if any.
    pub fn session_of<'h>(&self, headers: &'h http::HeaderMap) -> Option<&'h [u8]> {
        let name = self.config.affinity_header.as_ref()?;
        headers
            .get(name)
            .map(|v| v.as_bytes())
            .filter(|v| !v.is_empty())
    }

    /// Lease a server for a request. With `untried_only`, only servers it
    /// has not tried: none free but some at their cap is `at_capacity`
    /// (worth queueing for) rather than a reason to go back to a server
    /// that just failed. `prompt` and `session` feed prefix and session
    /// affinity: the preferred server gets it while not overloaded.
    pub fn acquire_for(
        &self,
        now: Instant,
        tried: &[u64],
        untried_only: bool,
        prompt: Option<&PromptChain>,
        session: Option<&[u8]>,
    ) -> Result<Lease, NoServer> {
        // The server holding enough of the prompt, if prefix affinity is on
        // (a session, when the request names one, decides instead).
        let affinity = self
            .affinity
            .as_ref()
            .zip(prompt.filter(|p| p.blocks() > 0 && session.is_none()));
        let holder = affinity.and_then(|((cfg, store), chain)| {
            store
                .longest(chain)
                .filter(|m| m.blocks as f64 >= cfg.min_match * chain.blocks() as f64)
                .map(|m| m.server)
        });
        let mut decided = false;
        let max_age = self.config.load_metrics.as_ref().map(|l| l.max_age);
        let servers = self.members.load();
        let mut at_capacity = false;
        let mut avail: Vec<(usize, Availability)> = Vec::with_capacity(servers.len());
        for (i, s) in servers.iter().enumerate() {
            let a = s.availability(now);
            if !a.is_usable() || (untried_only && tried.contains(&s.id)) {
                continue;
            }
            if s.under_cap() {
                avail.push((i, a));
            } else {
                at_capacity = true;
            }
        }
        let mut rng = rand::thread_rng();
        while !avail.is_empty() {
            let candidates: Vec<Candidate> = avail
                .iter()
                .map(|&(i, _)| Candidate {
                    outstanding: servers[i].load(now, max_age),
                    weight: servers[i].weight(),
                    tried: tried.contains(&servers[i].id),
                })
                .collect();
            let k = match self.preference(&servers, &avail, holder, session, affinity.is_some()) {
                None => pick(&candidates, &mut rng),
                Some((preferred, leeway)) => {
                    let (k, mut result) = pick_preferring(&candidates, preferred, leeway, &mut rng);
                    // A holder that is not among the candidates (ejected,
                    // at its cap) cannot take it: the prompt moves.
                    if holder.is_some() && preferred.is_none() {
                        result = Affinity::Overloaded;
                    }
                    if !decided {
                        metrics::affinity_decision(&self.name, result.label());
                        decided = true;
                    }
                    k
                }
            };
            let Some(k) = k else {
                break;
            };
            let (i, a) = avail[k];
            let probe = a == Availability::Probe;
            let server = &servers[i];
            if server.try_take(now, probe) {
                if let Some(((_, store), chain)) = &affinity {
                    store.record(chain, server.id);
                }
                return Ok(Lease::new(server.clone(), probe));
            }
            // Lost a race for the probe slot or the last unit of capacity.
            at_capacity |= !probe;
            avail.swap_remove(k);
        }
        Err(NoServer {
            retry_after: self.retry_after(now),
            at_capacity,
        })
    }

    /// Which candidate (index into `avail`) affinity prefers, with the
    /// leeway it keeps: the session's by rendezvous hashing, or else the
    /// prompt prefix's `holder`; `None` when no affinity applies.
    fn preference(
        &self,
        servers: &[Arc<Server>],
        avail: &[(usize, Availability)],
        holder: Option<u64>,
        session: Option<&[u8]>,
        by_prefix: bool,
    ) -> Option<(Option<usize>, Leeway)> {
        if session.is_none() && !by_prefix {
            return None;
        }
        // `[pool.affinity]`: the same leeway for sessions and prefixes.
        let leeway = Leeway {
            abs: self.config.affinity.balance_abs,
            rel: self.config.affinity.balance_rel,
        };
        let preferred = match session {
            // Every gateway ranks the servers alike, and only a leaving
            // server's sessions move.
            Some(session) => {
                (0..avail.len()).max_by_key(|&k| rendezvous(session, &servers[avail[k].0].addr))
            }
            None => holder.and_then(|id| avail.iter().position(|&(i, _)| servers[i].id == id)),
        };
        Some((preferred, leeway))
    }

    /// When the earliest server can be expected back: the honest
    /// `Retry-After` when none can take a request now.
    pub fn retry_after(&self, now: Instant) -> Duration {
        let health_back = self
            .health
            .as_ref()
            .map(|h| h.interval * h.rise)
            .unwrap_or(Duration::from_secs(1));
        self.members
            .load()
            .iter()
            .map(|s| match s.availability(now) {
                Availability::Ejected { until: Some(u) } | Availability::Cooling { until: u } => {
                    u.saturating_duration_since(now)
                }
                Availability::Down => health_back,
                // Usable but at its cap, or waiting on a probe: soon.
                _ => Duration::from_secs(1),
            })
            .min()
            .unwrap_or(Duration::from_secs(1))
    }

    /// How long until some server can take a request again: zero if one
    /// is usable (at its cap, the queue hands it the next free slot), the
    /// end of the earliest cooldown if they are only cooling. `None` if
    /// every server is down or ejected: those are broken, not busy, and a
    /// request is not held waiting for them.
    pub fn until_ready(&self, now: Instant) -> Option<Duration> {
        self.members
            .load()
            .iter()
            .filter_map(|s| match s.availability(now) {
                a if a.is_usable() => Some(Duration::ZERO),
                Availability::Cooling { until } => Some(until.saturating_duration_since(now)),
                _ => None,
            })
            .min()
    }

    /// How long until a server that is only cooling down (up, not ejected)
    /// can take requests; `None` if no server is cooling.
    pub fn until_cooled(&self, now: Instant) -> Option<Duration> {
        self.members
            .load()
            .iter()
            .filter_map(|s| match s.availability(now) {
                Availability::Cooling { until } => Some(until.saturating_duration_since(now)),
                _ => None,
            })
            .min()
    }

    /// A server this request has not tried is usable (perhaps at its cap,
    /// in which case the retry waits in the queue for it).
    pub fn has_untried_usable(&self, now: Instant, tried: &[u64]) -> bool {
        self.members
            .load()
            .iter()
            .any(|s| !tried.contains(&s.id) && s.availability(now).is_usable())
    }

    /// At least one server could take a request now (caps aside).
    /// A request could take a slot now without anyone waiting for it
    /// (what a job needs to start).
    pub fn has_free_slot(&self, now: Instant) -> bool {
        !self.admission.has_waiters()
            && self
                .members
                .load()
                .iter()
                .any(|s| s.availability(now).is_usable() && s.under_cap())
    }

    /// Slots a request could take now without anyone waiting for them;
    /// `None` when a usable server has no `max_conns` (no limit).
    pub fn free_slots(&self, now: Instant) -> Option<u32> {
        if self.admission.has_waiters() {
            return Some(0);
        }
        let mut free = 0u32;
        for s in self.members.load().iter() {
            if !s.availability(now).is_usable() {
                continue;
            }
            match s.max_conns() {
                0 => return None,
                cap => free = free.saturating_add(cap.saturating_sub(s.outstanding())),
            }
        }
        Some(free)
    }

    pub fn has_usable(&self, now: Instant) -> bool {
        self.members
            .load()
            .iter()
            .any(|s| s.availability(now).is_usable())
    }

    pub fn snapshot(&self, now: Instant) -> PoolStatus {
        let members = self.servers();
        let draining = self.draining().clone();
        PoolStatus {
            name: self.name.clone(),
            tls: self.tls,
            queue_depth: self.admission.depth(),
            queue_max_depth: self.admission.max_depth(),
            prefix_blocks: self.prefix_blocks(),
            queue: self.admission.tally.read(),
            servers: members
                .iter()
                .chain(draining.iter())
                .map(|s| {
                    let mut st = s.snapshot(now);
                    if let (Some(r), Some(l)) = (&mut st.reported, &self.config.load_metrics) {
                        r.stale = r.age_ms > l.max_age.as_millis() as u64;
                    }
                    st
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests;
