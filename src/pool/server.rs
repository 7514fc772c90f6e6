//! One backend server (a pool member): its live state (outstanding
//! requests, ejection, cooldown, health, draining) and the peer requests
//! to it are sent through. A member's state belongs to its identity, so
//! it lives as long as some request or the pool still holds it.

use super::admission::Admission;
use super::eject::{Ejection, Gate};
use super::health::{HealthState, Transition};
use super::tally::{Tally, TallyStatus};
use crate::config::{PoolConfig, ServerConfig};
use crate::metrics;
use crate::tls::UpstreamTls;
use arc_swap::ArcSwap;
use pingora_core::upstreams::peer::HttpPeer;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Ids of servers, unique for the life of the process: "already tried"
/// and member identity across DNS changes are by id.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub struct Server {
    pub id: u64,
    /// Index of the configured server (`pool.servers`) it comes from
    /// (a reload may move it).
    entry: AtomicUsize,
    pub pool: String,
    /// The pool's queue: a slot this server frees goes to its head.
    pub(super) admission: Arc<Admission>,
    /// How metrics, logs and `/status` name it: the configured `addr`, with
    /// the address it resolved to after it when that is a host name
    /// (`api.example.com:443 (10.1.2.3)`).
    pub addr: String,
    /// The configured `host:port` it comes from.
    pub name: String,
    /// The address requests go to.
    pub socket: SocketAddr,
    /// Settings a reload may change; its state stays.
    weight: AtomicU32,
    max_conns: AtomicU32,
    peer: ArcSwap<HttpPeer>,
    outstanding: AtomicU32,
    state: Mutex<ServerState>,
    /// Held while dialling a server that may speak HTTP/2, so that
    /// concurrent requests share its one connection instead of each
    /// opening their own (hosted APIs limit connections per client).
    dial: tokio::sync::Mutex<()>,
    /// What its last new connection spoke: 0 not known yet, 1 HTTP/1.x
    /// (dials need no turns), 2 HTTP/2.
    spoke: AtomicU8,
    /// Left the pool (its address vanished from DNS): no new requests;
    /// those in flight finish.
    draining: AtomicBool,
    /// Attempts, server failures among them, and time to first byte of
    /// those answered (for `/status`).
    tally: Tally,
    /// The load it reported on its own metrics (`[pool.load_metrics]`).
    reported: Mutex<Option<Reported>>,
}

/// Load a server reported about itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reported {
    pub running: f64,
    pub waiting: f64,
    pub kv_usage: Option<f64>,
    pub at: Instant,
}

/// What `/status` shows of a report.
#[derive(Debug, Clone, Serialize)]
pub struct ReportedStatus {
    pub running: f64,
    pub waiting: f64,
    pub kv_usage: Option<f64>,
    pub age_ms: u64,
    /// Old enough to be ignored by selection.
    pub stale: bool,
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

/// The label of a member at `socket` of configured server `cfg`.
pub fn member_label(cfg: &ServerConfig, socket: SocketAddr) -> String {
    if cfg.is_name {
        format!("{} ({})", cfg.addr, socket.ip())
    } else {
        cfg.addr.clone()
    }
}

impl Server {
    /// A member at `socket` of the configured server `cfg`. One that
    /// `joined` a running pool with health checks starts down until its
    /// first check passes.
    pub(super) fn new(
        pool: &PoolConfig,
        cfg: &ServerConfig,
        entry: usize,
        socket: SocketAddr,
        admission: Arc<Admission>,
        tls: Option<&UpstreamTls>,
        joined: bool,
    ) -> Self {
        let sni = pool.sni.as_deref().unwrap_or(&cfg.host);
        let (rise, fall) = pool.health.as_ref().map_or((1, 1), |h| (h.rise, h.fall));
        let health = match joined && pool.health.is_some() {
            true => HealthState::unchecked(rise, fall),
            false => HealthState::new(rise, fall),
        };
        Server {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            entry: AtomicUsize::new(entry),
            pool: pool.name.clone(),
            admission,
            addr: member_label(cfg, socket),
            name: cfg.addr.clone(),
            socket,
            weight: AtomicU32::new(cfg.weight),
            max_conns: AtomicU32::new(cfg.max_conns),
            peer: ArcSwap::from_pointee(crate::tls::upstream::peer(socket, sni, tls, pool.http2)),
            outstanding: AtomicU32::new(0),
            dial: tokio::sync::Mutex::new(()),
            spoke: AtomicU8::new(0),
            draining: AtomicBool::new(false),
            tally: Tally::default(),
            reported: Mutex::new(None),
            state: Mutex::new(ServerState {
                ejection: Ejection::new(pool.max_fails, pool.fail_timeout, pool.probe_interval),
                health,
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

    /// The peer requests are sent through (its TLS and HTTP/2 settings).
    pub fn peer(&self) -> Arc<HttpPeer> {
        self.peer.load_full()
    }

    pub fn entry(&self) -> usize {
        self.entry.load(Ordering::Relaxed)
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub fn max_conns(&self) -> u32 {
        self.max_conns.load(Ordering::Relaxed)
    }

    /// Take the settings of a new config (a reload) while keeping every
    /// piece of state: outstanding requests and their leases, ejection and
    /// its count, cooldown, health.
    pub(super) fn reconfigure(
        &self,
        pool: &PoolConfig,
        cfg: &ServerConfig,
        entry: usize,
        tls: Option<&UpstreamTls>,
    ) {
        let sni = pool.sni.as_deref().unwrap_or(&cfg.host);
        self.entry.store(entry, Ordering::Relaxed);
        self.weight.store(cfg.weight, Ordering::Relaxed);
        self.max_conns.store(cfg.max_conns, Ordering::Relaxed);
        self.peer.store(Arc::new(crate::tls::upstream::peer(
            self.socket,
            sni,
            tls,
            pool.http2,
        )));
        let (rise, fall) = pool.health.as_ref().map_or((1, 1), |h| (h.rise, h.fall));
        let mut st = self.state();
        st.ejection
            .reconfigure(pool.max_fails, pool.fail_timeout, pool.probe_interval);
        st.health.reconfigure(rise, fall);
    }

    /// A turn to dial, when the server may multiplex requests over HTTP/2
    /// (`None` when it speaks HTTP/1, or the wait would outlast `within`).
    pub async fn dial_turn(&self, within: Duration) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        let h2_possible = self.peer.load().options.alpn.get_max_http_version() == 2;
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

    pub(super) fn under_cap(&self) -> bool {
        let cap = self.max_conns();
        cap == 0 || self.outstanding() < cap
    }

    /// Whether the server may take a request now, ignoring its cap.
    pub fn availability(&self, now: Instant) -> Availability {
        if self.is_draining() {
            return Availability::Draining;
        }
        self.state().availability(now)
    }

    /// Take no new requests; those in flight finish.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Count a request as outstanding; for a probe, also take the probe slot.
    /// Fails if, since selection looked, the slot or the capacity went away.
    pub(super) fn try_take(&self, now: Instant, probe: bool) -> bool {
        if probe {
            let mut st = self.state();
            if !st.ejection.take_probe(now) {
                return false;
            }
        }
        let cap = self.max_conns();
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

    pub(super) fn release(&self, probe_unresolved: bool) {
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

    /// The load the server reported about itself.
    pub fn report_load(&self, report: Reported) {
        *self.reported.lock().unwrap_or_else(|p| p.into_inner()) = Some(report);
    }

    /// The report, if not older than `max_age`.
    pub fn fresh_report(&self, now: Instant, max_age: Duration) -> Option<Reported> {
        let r = (*self.reported.lock().unwrap_or_else(|p| p.into_inner()))?;
        (now.saturating_duration_since(r.at) <= max_age).then_some(r)
    }

    /// The load selection weighs: requests in flight from this gateway,
    /// or, when the server's fresh report says more are running (traffic
    /// from elsewhere), that; plus those waiting in its own queue.
    pub fn load(&self, now: Instant, max_age: Option<Duration>) -> u32 {
        let ours = self.outstanding();
        let Some(r) = max_age.and_then(|age| self.fresh_report(now, age)) else {
            return ours;
        };
        let running = r.running.max(0.0).min(f64::from(u32::MAX)) as u32;
        let waiting = r.waiting.max(0.0).min(f64::from(u32::MAX)) as u32;
        ours.max(running).saturating_add(waiting)
    }

    /// Count one attempt for `/status`: a server failure or not, and how
    /// long its answer took to begin if it answered.
    pub fn count_attempt(&self, failure: bool, first_byte: Option<Duration>) {
        self.tally.record(failure, first_byte);
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
            // `/health` may pass while the API fails: one real request
            // decides.
            st.ejection.admit_probe(Instant::now());
            tracing::debug!(pool = %self.pool, server = %self.addr, "health check passed: one probe request admitted");
        }
        t
    }

    pub fn snapshot(&self, now: Instant) -> ServerStatus {
        let availability = self.availability(now);
        let st = self.state();
        let ejected_for = st
            .ejection
            .ejected_until()
            .map(|u| u.saturating_duration_since(now));
        ServerStatus {
            addr: self.addr.clone(),
            name: self.name.clone(),
            address: self.socket.to_string(),
            weight: self.weight(),
            state: availability.label(),
            up: availability.is_usable(),
            health_up: st.health.is_up(),
            outstanding: self.outstanding(),
            max_conns: self.max_conns(),
            fails: st.ejection.fails(),
            ejected_for_ms: ejected_for.map(|d| d.as_millis() as u64),
            cooldown_for_ms: st
                .cooldown_until
                .filter(|u| *u > now)
                .map(|u| u.saturating_duration_since(now).as_millis() as u64),
            attempts: self.tally.read(),
            reported: reported_status(&self.reported, now),
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
    /// Gone from the pool (DNS): finishing its requests, taking no new ones.
    Draining,
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
            Availability::Draining => "draining",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerStatus {
    pub addr: String,
    /// The configured `host:port`.
    pub name: String,
    /// The address requests go to.
    pub address: String,
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
    /// Attempts so far: `failed` are server failures, `timed` were
    /// answered, after `time_sum_seconds` to first byte in all.
    pub attempts: TallyStatus,
    /// The last load it reported (`[pool.load_metrics]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reported: Option<ReportedStatus>,
}

fn reported_status(reported: &Mutex<Option<Reported>>, now: Instant) -> Option<ReportedStatus> {
    let r = (*reported.lock().unwrap_or_else(|p| p.into_inner()))?;
    let age = now.saturating_duration_since(r.at);
    Some(ReportedStatus {
        running: r.running,
        waiting: r.waiting,
        kv_usage: r.kv_usage,
        age_ms: age.as_millis() as u64,
        stale: false,
    })
}
