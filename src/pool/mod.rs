//! A pool of backend servers: who is usable, who has the least outstanding
//! work, and the leases that count that work.

mod admission;
mod eject;
mod health;
mod lease;
pub mod prober;
mod select;

pub use admission::{Admission, Shed, Waiting};
pub use eject::{Ejection, Gate};
pub use health::{HealthState, Transition};
pub use lease::Lease;
pub use select::{pick, Candidate};

use crate::config::{HealthConfig, PoolConfig, ServerConfig};
use crate::metrics;
use crate::tls::UpstreamTls;
use http::HeaderValue;
use pingora_core::upstreams::peer::HttpPeer;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub struct Server {
    pub pool: String,
    /// The pool's queue: a slot this server frees goes to its head.
    admission: Arc<Admission>,
    pub addr: String,
    /// The address `addr` resolved to at start-up.
    pub socket: SocketAddr,
    pub weight: u32,
    pub max_conns: u32,
    peer: HttpPeer,
    outstanding: AtomicU32,
    state: Mutex<ServerState>,
    /// Held while dialling a server that may speak HTTP/2, so that
    /// concurrent requests share its one connection instead of each
    /// opening their own (hosted APIs limit connections per client).
    dial: tokio::sync::Mutex<()>,
    /// What its last new connection spoke: 0 not known yet, 1 HTTP/1.x
    /// (dials need no turns), 2 HTTP/2.
    spoke: AtomicU8,
}

struct ServerState {
    ejection: Ejection,
    health: HealthState,
    /// Told to come back later (429, or 503 with Retry-After): skipped by
    /// every request until then.
    cooldown_until: Option<Instant>,
}

impl ServerState {
    fn availability(&self, now: Instant) -> Availability {
        if !self.health.is_up() {
            return Availability::Down;
        }
        match self.ejection.gate(now) {
            Gate::Closed { until } => Availability::Ejected { until },
            _ if self.cooldown_until.is_some_and(|u| now < u) => Availability::Cooling {
                until: self.cooldown_until.unwrap_or(now),
            },
            Gate::Open => Availability::Usable,
            Gate::Probe => Availability::Probe,
        }
    }
}

impl Server {
    fn new(
        pool: &PoolConfig,
        cfg: &ServerConfig,
        admission: Arc<Admission>,
        tls: Option<&UpstreamTls>,
    ) -> Self {
        let sni = pool.sni.as_deref().unwrap_or(&cfg.host);
        let (rise, fall) = pool.health.as_ref().map_or((1, 1), |h| (h.rise, h.fall));
        Server {
            pool: pool.name.clone(),
            admission,
            addr: cfg.addr.clone(),
            socket: cfg.resolved,
            weight: cfg.weight,
            max_conns: cfg.max_conns,
            peer: crate::tls::upstream::peer(cfg.resolved, sni, tls, pool.http2),
            outstanding: AtomicU32::new(0),
            dial: tokio::sync::Mutex::new(()),
            spoke: AtomicU8::new(0),
            state: Mutex::new(ServerState {
                ejection: Ejection::new(pool.max_fails, pool.fail_timeout),
                health: HealthState::new(rise, fall),
                cooldown_until: None,
            }),
        }
    }

    /// Lock the state. A panic elsewhere while holding it leaves plain data
    /// behind, still coherent enough to keep serving, so poisoning is ignored.
    fn state(&self) -> MutexGuard<'_, ServerState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn peer(&self) -> &HttpPeer {
        &self.peer
    }

    /// A turn to dial, when the server may multiplex requests over HTTP/2
    /// (`None` when it speaks HTTP/1, or the wait would outlast `within`).
    pub async fn dial_turn(&self, within: Duration) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        let h2_possible = self.peer.options.alpn.get_max_http_version() == 2;
        if !h2_possible || self.spoke.load(Ordering::Relaxed) == 1 {
            return None;
        }
        tokio::time::timeout(within, self.dial.lock()).await.ok()
    }

    /// What a new connection to the server turned out to speak.
    pub fn note_protocol(&self, http2: bool) {
        self.spoke
            .store(if http2 { 2 } else { 1 }, Ordering::Relaxed);
    }

    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Relaxed)
    }

    fn under_cap(&self) -> bool {
        self.max_conns == 0 || self.outstanding() < self.max_conns
    }

    /// Whether the server may take a request now, ignoring its cap.
    pub fn availability(&self, now: Instant) -> Availability {
        self.state().availability(now)
    }

    /// Count a request as outstanding; for a probe, also take the probe slot.
    /// Fails if, since selection looked, the slot or the capacity went away.
    fn try_take(&self, now: Instant, probe: bool) -> bool {
        if probe {
            let mut st = self.state();
            if !st.ejection.take_probe(now) {
                return false;
            }
        }
        let cap = self.max_conns;
        let taken = self
            .outstanding
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (cap == 0 || n < cap).then_some(n + 1)
            })
            .is_ok();
        if !taken && probe {
            self.state().ejection.release_probe();
        }
        taken
    }

    fn release(&self, probe_unresolved: bool) {
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
        if probe_unresolved {
            self.state().ejection.release_probe();
        }
    }

    /// Feed the result of a request to passive ejection.
    pub fn record(&self, failure: bool, now: Instant) {
        let ejected = {
            let mut st = self.state();
            if failure {
                st.ejection.record_failure(now)
            } else {
                st.ejection.record_success(now);
                false
            }
        };
        if ejected {
            metrics::upstream_ejected(&self.pool, &self.addr);
            tracing::warn!(pool = %self.pool, server = %self.addr, "server ejected after repeated failures");
        }
    }

    /// The backend asked for a pause: skip it until `until` (a later
    /// cooldown already in force stands).
    pub fn cool_until(&self, until: Instant) {
        let mut st = self.state();
        if st.cooldown_until.is_none_or(|u| u < until) {
            st.cooldown_until = Some(until);
        }
    }

    /// Time left in a cooldown (zero when not cooling).
    pub fn cooldown_left(&self, now: Instant) -> Duration {
        self.state()
            .cooldown_until
            .map_or(Duration::ZERO, |u| u.saturating_duration_since(now))
    }

    /// Feed one active health check result.
    pub fn record_health(&self, passed: bool) -> Transition {
        let mut st = self.state();
        let t = st.health.record(passed);
        if passed && st.ejection.ejected_until().is_some() {
            st.ejection.clear();
            tracing::info!(pool = %self.pool, server = %self.addr, "health check passed: passive ejection ended");
        }
        t
    }

    pub fn snapshot(&self, now: Instant) -> ServerStatus {
        let st = self.state();
        let availability = st.availability(now);
        let ejected_for = st
            .ejection
            .ejected_until()
            .map(|u| u.saturating_duration_since(now));
        ServerStatus {
            addr: self.addr.clone(),
            weight: self.weight,
            state: availability.label(),
            up: availability.is_usable(),
            health_up: st.health.is_up(),
            outstanding: self.outstanding(),
            max_conns: self.max_conns,
            fails: st.ejection.fails(),
            ejected_for_ms: ejected_for.map(|d| d.as_millis() as u64),
            cooldown_for_ms: st
                .cooldown_until
                .filter(|u| *u > now)
                .map(|u| u.saturating_duration_since(now).as_millis() as u64),
            ejected_until: ejected_for.map(|d| {
                humantime::format_rfc3339_millis(std::time::SystemTime::now() + d).to_string()
            }),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Usable,
    /// Ejection over; one probe request may go.
    Probe,
    /// Passively ejected (or waiting on a probe).
    Ejected {
        until: Option<Instant>,
    },
    /// Asked to come back later (Retry-After / 429).
    Cooling {
        until: Instant,
    },
    /// Failing active health checks.
    Down,
}

impl Availability {
    pub fn is_usable(self) -> bool {
        matches!(self, Availability::Usable | Availability::Probe)
    }

    pub fn label(self) -> &'static str {
        match self {
            Availability::Usable => "up",
            Availability::Probe => "probing",
            Availability::Ejected { .. } => "ejected",
            Availability::Cooling { .. } => "cooling",
            Availability::Down => "down",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerStatus {
    pub addr: String,
    pub weight: u32,
    pub state: &'static str,
    pub up: bool,
    pub health_up: bool,
    pub outstanding: u32,
    pub max_conns: u32,
    pub fails: u32,
    /// Milliseconds until a passive ejection ends, if one is recorded
    /// (0 once it has ended and the server waits for its probe).
    pub ejected_for_ms: Option<u64>,
    /// The same moment as a wall-clock RFC 3339 time.
    pub ejected_until: Option<String>,
    /// Milliseconds left in a Retry-After cooldown.
    pub cooldown_for_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PoolStatus {
    pub name: String,
    /// The servers are reached over TLS.
    pub tls: bool,
    /// Requests waiting for a server under its `max_conns`.
    pub queue_depth: usize,
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
    pub servers: Vec<Arc<Server>>,
    /// The servers are reached over TLS.
    pub tls: bool,
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

/// Why no server could be leased.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoServer {
    /// Best estimate of when one can take requests again.
    pub retry_after: Duration,
    /// Some server is usable but at its `max_conns`: worth queueing for.
    pub at_capacity: bool,
}

impl Pool {
    /// `credential` is the pool's key in its header, already marked
    /// sensitive so that no `Debug` of a header map shows it.
    /// `tls` is the pool's loaded TLS material (`None` for a plain pool).
    pub fn new(
        cfg: &PoolConfig,
        credential: Option<HeaderValue>,
        tls: Option<&UpstreamTls>,
    ) -> Self {
        let admission = Arc::new(Admission::new(&cfg.name, &cfg.queue, Instant::now()));
        Pool {
            name: cfg.name.clone(),
            admission: admission.clone(),
            host: cfg.host.clone(),
            upstream_headers: PoolHeaders {
                // Checked by config validation; an invalid one cannot get here.
                host: cfg
                    .host
                    .as_deref()
                    .and_then(|h| HeaderValue::from_str(h).ok()),
                credential: credential.map(|v| (cfg.api_key_header.clone(), v)),
            },
            health: cfg.health.clone(),
            tls: tls.is_some(),
            servers: cfg
                .servers
                .iter()
                .map(|s| Arc::new(Server::new(cfg, s, admission.clone(), tls)))
                .collect(),
        }
    }

    /// Lease the best usable server, preferring ones not in `tried`
    /// (indices into `servers`).
    pub fn acquire(&self, now: Instant, tried: &[usize]) -> Result<Lease, NoServer> {
        self.acquire_among(now, tried, false)
    }

    /// Lease a server this request has not tried; none free, but some at
    /// their cap, is `at_capacity` (worth queueing for) rather than a
    /// reason to go back to a server that just failed.
    pub fn acquire_untried(&self, now: Instant, tried: &[usize]) -> Result<Lease, NoServer> {
        self.acquire_among(now, tried, true)
    }

    fn acquire_among(
        &self,
        now: Instant,
        tried: &[usize],
        untried_only: bool,
    ) -> Result<Lease, NoServer> {
        let mut at_capacity = false;
        let mut avail: Vec<(usize, Availability)> = Vec::with_capacity(self.servers.len());
        for (i, s) in self.servers.iter().enumerate() {
            let a = s.availability(now);
            if !a.is_usable() || (untried_only && tried.contains(&i)) {
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
                    outstanding: self.servers[i].outstanding(),
                    weight: self.servers[i].weight,
                    tried: tried.contains(&i),
                })
                .collect();
            let Some(k) = pick(&candidates, &mut rng) else {
                break;
            };
            let (i, a) = avail[k];
            let probe = a == Availability::Probe;
            let server = &self.servers[i];
            if server.try_take(now, probe) {
                return Ok(Lease::new(server.clone(), i, probe));
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

    /// When the earliest server can be expected back: the honest
    /// `Retry-After` when none can take a request now.
    pub fn retry_after(&self, now: Instant) -> Duration {
        let health_back = self
            .health
            .as_ref()
            .map(|h| h.interval * h.rise)
            .unwrap_or(Duration::from_secs(1));
        self.servers
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
        self.servers
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
        self.servers
            .iter()
            .filter_map(|s| match s.availability(now) {
                Availability::Cooling { until } => Some(until.saturating_duration_since(now)),
                _ => None,
            })
            .min()
    }

    /// A server this request has not tried is usable (perhaps at its cap,
    /// in which case the retry waits in the queue for it).
    pub fn has_untried_usable(&self, now: Instant, tried: &[usize]) -> bool {
        self.servers
            .iter()
            .enumerate()
            .any(|(i, s)| !tried.contains(&i) && s.availability(now).is_usable())
    }

    /// At least one server could take a request now (caps aside).
    pub fn has_usable(&self, now: Instant) -> bool {
        self.servers.iter().any(|s| s.availability(now).is_usable())
    }

    pub fn snapshot(&self, now: Instant) -> PoolStatus {
        PoolStatus {
            name: self.name.clone(),
            tls: self.tls,
            queue_depth: self.admission.depth(),
            servers: self.servers.iter().map(|s| s.snapshot(now)).collect(),
        }
    }
}

#[cfg(test)]
mod tests;
