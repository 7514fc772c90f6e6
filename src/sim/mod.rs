//! A simulated OpenAI-compatible model backend on raw tokio TCP.
//!
//! Used by end-to-end tests, benchmarks and the demo (`ballast sim`). It
//! speaks just enough HTTP/1.1 (keep-alive, Content-Length and chunked
//! bodies) to be driven by a real gateway, and owns the wire so it can
//! misbehave on purpose: see [`FaultKind`].
//!
//! Routes: `GET /health`, `GET /v1/models`, `POST /v1/chat/completions`
//! (also `/beta/chat/completions`, DeepSeek's prefix-completion path),
//! `POST /v1/completions` (streamed as SSE when `"stream": true`), `GET /ws`
//! (a WebSocket echo, see the `ws` module), any other path echoes the
//! request as JSON. The control plane under `/_sim/` (stats, fault, health,
//! reset) is exempt from faults and not counted as traffic.

mod cli;
mod completions;
mod fault;
mod h2;
mod handlers;
mod http;
mod io;
mod kv;
#[cfg(test)]
mod test_client;
#[cfg(test)]
mod tests;
mod ws;
#[cfg(test)]
mod ws_tests;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use cli::{run, SimArgs};
pub use fault::{Fault, FaultKind, HealthMode};

/// How many traffic requests [`Stats::log`] keeps.
pub const LOG_CAPACITY: usize = 1000;

/// How much of each request body [`RequestRecord::body_text`] keeps.
pub const BODY_TEXT_MAX: usize = 4096;

/// Start-up settings of one simulated server.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Shown in `x-sim-server`, `system_fingerprint` and the echo body.
    pub name: String,
    /// The model id served (default "sim-model").
    pub model: String,
    /// Tokens per completion unless the request sets `max_tokens` (default 16).
    pub tokens: u32,
    /// Delay before each streamed token (default 20ms).
    pub token_interval: Duration,
    pub fault: Fault,
    pub health: HealthMode,
    /// Serve TLS with this certificate and key.
    pub tls: Option<crate::config::TlsFiles>,
    /// With `tls`: require a client certificate signed by this CA (mTLS;
    /// TLS 1.2 only, so that a refusal is a handshake failure).
    pub client_ca: Option<std::path::PathBuf>,
    /// Speak HTTP/2: offered by ALPN with TLS, by prior knowledge (h2c
    /// preface) without. HTTP/1.1 stays available either way.
    pub http2: bool,
    /// Prefill time per prompt token not in the KV cache (0: none).
    pub prefill_per_token: Duration,
    /// Prompt blocks the KV cache holds (0: no cache).
    pub kv_cache_blocks: usize,
    /// Refuse partial assistant messages (both continuation dialects)
    /// with a 400, as a server without prefill support would.
    pub no_continuation: bool,
    /// Refuse prompts longer than this many words with vLLM's
    /// context-length 400 (0: no limit).
    pub max_context: u64,
    /// Refuse a request with 503 while this many are in flight (0: no
    /// limit): a backend with a real capacity.
    pub max_concurrency: u64,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            name: "sim".to_string(),
            model: "sim-model".to_string(),
            tokens: 16,
            token_interval: Duration::from_millis(20),
            fault: Fault::default(),
            health: HealthMode::Ok,
            tls: None,
            client_ca: None,
            http2: false,
            prefill_per_token: Duration::ZERO,
            kv_cache_blocks: 0,
            no_continuation: false,
            max_context: 0,
            max_concurrency: 0,
        }
    }
}

/// Counters and the recent request log, as served at `GET /_sim/stats`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Traffic requests (not control, not /health).
    pub requests: u64,
    /// `/health` hits.
    pub health_checks: u64,
    /// Traffic requests being handled now.
    pub in_flight: u64,
    /// Most traffic requests handled at once.
    pub peak_in_flight: u64,
    /// Traffic requests that came over HTTP/2.
    #[serde(default)]
    pub http2_requests: u64,
    /// HTTP/2 streams the client reset (RST_STREAM) before the response
    /// was complete; the connection itself stayed open.
    #[serde(default)]
    pub streams_reset: u64,
    pub connections_accepted: u64,
    /// Client went away (closed or reset) before a response or stream was
    /// complete, including while a hang/stall/latency fault held it.
    pub disconnects_mid_response: u64,
    /// WebSocket upgrades answered with 101 (`GET /ws`).
    pub websockets_opened: u64,
    /// WebSocket sessions ended, cleanly or not.
    pub websockets_closed: u64,
    /// Text and binary WebSocket messages received.
    pub ws_messages: u64,
    /// Payload bytes of those messages.
    pub ws_bytes: u64,
    /// Code of the last Close frame received (1005 when it had none).
    pub ws_last_close_code: Option<u16>,
    /// Bytes the client had sent past an upgrade request (head and any
    /// declared body) before the 101 was written, summed over upgrades. A
    /// gateway that holds back the upgraded stream until the 101 keeps it 0.
    pub ws_bytes_before_upgrade: u64,
    /// The last [`LOG_CAPACITY`] traffic requests, oldest first.
    pub log: Vec<RequestRecord>,
}

/// One traffic request as it reached the server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Milliseconds since the server started.
    pub at_ms: u64,
    pub method: String,
    /// The request target as sent (path and query).
    pub path: String,
    /// Header names lowercased, in arrival order, duplicates kept.
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    pub body_sha256: String,
    /// `HTTP/1.1` or `HTTP/2`.
    #[serde(default)]
    pub version: String,
    /// The body's first [`BODY_TEXT_MAX`] bytes as text (lossy), for tests
    /// that check what a request said.
    #[serde(default)]
    pub body_text: String,
}

#[derive(Default)]
pub(crate) struct Counters {
    requests: u64,
    health_checks: u64,
    in_flight: u64,
    peak_in_flight: u64,
    http2_requests: u64,
    streams_reset: u64,
    connections_accepted: u64,
    disconnects_mid_response: u64,
    websockets_opened: u64,
    websockets_closed: u64,
    ws_messages: u64,
    ws_bytes: u64,
    ws_last_close_code: Option<u16>,
    ws_bytes_before_upgrade: u64,
    log: VecDeque<RequestRecord>,
}

/// State shared by the accept loop, every connection and [`SimServer`].
pub(crate) struct Shared {
    pub(crate) name: String,
    pub(crate) model: String,
    pub(crate) tokens: u32,
    pub(crate) token_interval: Duration,
    pub(crate) started: Instant,
    pub(crate) seq: AtomicU64,
    fault: Mutex<Fault>,
    health: Mutex<HealthMode>,
    counters: Mutex<Counters>,
    shutdown: watch::Sender<bool>,
    tls: Option<pingora_rustls::TlsAcceptor>,
    http2: bool,
    pub(crate) kv: kv::KvCache,
    pub(crate) no_continuation: bool,
    pub(crate) max_context: u64,
    pub(crate) max_concurrency: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn counters(&self) -> MutexGuard<'_, Counters> {
        lock(&self.counters)
    }

    pub(crate) fn stats(&self) -> Stats {
        let c = self.counters();
        Stats {
            requests: c.requests,
            health_checks: c.health_checks,
            in_flight: c.in_flight,
            peak_in_flight: c.peak_in_flight,
            http2_requests: c.http2_requests,
            streams_reset: c.streams_reset,
            connections_accepted: c.connections_accepted,
            disconnects_mid_response: c.disconnects_mid_response,
            websockets_opened: c.websockets_opened,
            websockets_closed: c.websockets_closed,
            ws_messages: c.ws_messages,
            ws_bytes: c.ws_bytes,
            ws_last_close_code: c.ws_last_close_code,
            ws_bytes_before_upgrade: c.ws_bytes_before_upgrade,
            log: c.log.iter().cloned().collect(),
        }
    }

    pub(crate) fn reset_stats(&self) {
        let mut c = self.counters();
        let in_flight = c.in_flight;
        *c = Counters {
            in_flight,
            peak_in_flight: in_flight,
            ..Counters::default()
        };
    }

    pub(crate) fn fault(&self) -> Fault {
        lock(&self.fault).clone()
    }

    pub(crate) fn set_fault(&self, f: Fault) {
        *lock(&self.fault) = f;
    }

    /// The fault for the request now arriving; counts down `times`.
    pub(crate) fn take_fault(&self) -> Fault {
        let mut f = lock(&self.fault);
        match f.times {
            None => f.clone(),
            Some(0) => {
                *f = Fault::default();
                Fault::default()
            }
            Some(n) => {
                let now = f.clone();
                if n == 1 {
                    *f = Fault::default();
                } else {
                    f.times = Some(n - 1);
                }
                now
            }
        }
    }

    pub(crate) fn health(&self) -> HealthMode {
        *lock(&self.health)
    }

    pub(crate) fn set_health(&self, h: HealthMode) {
        *lock(&self.health) = h;
    }

    pub(crate) fn count_health_check(&self) {
        self.counters().health_checks += 1;
    }

    pub(crate) fn count_disconnect(&self) {
        self.counters().disconnects_mid_response += 1;
    }

    pub(crate) fn count_stream_reset(&self) {
        let mut c = self.counters();
        c.streams_reset += 1;
        c.disconnects_mid_response += 1;
    }

    /// Counts and logs a traffic request; the guard keeps it in flight.
    pub(crate) fn begin_request(self: &Arc<Self>, record: RequestRecord) -> InFlight {
        let mut c = self.counters();
        c.requests += 1;
        if record.version == "HTTP/2" {
            c.http2_requests += 1;
        }
        c.in_flight += 1;
        c.peak_in_flight = c.peak_in_flight.max(c.in_flight);
        if c.log.len() >= LOG_CAPACITY {
            c.log.pop_front();
        }
        c.log.push_back(record);
        InFlight(self.clone())
    }

    pub(crate) fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// Decrements `in_flight` however the request ends.
pub(crate) struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut c = self.0.counters();
        c.in_flight = c.in_flight.saturating_sub(1);
    }
}

/// A running simulated backend. Dropping it shuts it down.
pub struct SimServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl SimServer {
    /// Binds `listen`, spawns the accept loop on the current tokio runtime
    /// and returns once the socket is listening.
    pub async fn start(listen: SocketAddr, opts: SimOptions) -> std::io::Result<SimServer> {
        let tls = match &opts.tls {
            None => None,
            Some(files) => Some(tls_acceptor(files, &opts)?),
        };
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            name: opts.name,
            model: opts.model,
            tokens: opts.tokens,
            token_interval: opts.token_interval,
            started: Instant::now(),
            seq: AtomicU64::new(0),
            fault: Mutex::new(opts.fault),
            health: Mutex::new(opts.health),
            counters: Mutex::new(Counters::default()),
            shutdown,
            tls,
            http2: opts.http2,
            kv: kv::KvCache::new(opts.prefill_per_token, opts.kv_cache_blocks),
            no_continuation: opts.no_continuation,
            max_context: opts.max_context,
            max_concurrency: opts.max_concurrency,
        });
        tokio::spawn(accept_loop(shared.clone(), listener));
        tracing::debug!(name = %shared.name, %addr, "sim server listening");
        Ok(SimServer { shared, addr })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// The request fault now in force (after any `times` countdown).
    pub fn fault(&self) -> Fault {
        self.shared.fault()
    }

    pub fn set_fault(&self, f: Fault) {
        self.shared.set_fault(f);
    }

    pub fn set_health(&self, h: HealthMode) {
        self.shared.set_health(h);
    }

    pub fn reset_stats(&self) {
        self.shared.reset_stats();
    }

    /// Stops accepting and closes every open connection (in-flight requests
    /// and streams are cut). Idempotent; the port is released promptly.
    pub fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for SimServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimServer")
            .field("name", &self.shared.name)
            .field("addr", &self.addr)
            .finish()
    }
}

/// The sim's TLS side. Certificate dates are not checked: a test may want
/// an expired server.
fn tls_acceptor(
    files: &crate::config::TlsFiles,
    opts: &SimOptions,
) -> std::io::Result<pingora_rustls::TlsAcceptor> {
    use pingora_rustls::{version, RootCertStore, ServerConfig, WebPkiClientVerifier};
    let fail = |e: String| std::io::Error::other(e);
    let mut config = match &opts.client_ca {
        None => {
            crate::tls::listener::server_config(files, None)
                .map_err(|p| fail(p.message))?
                .0
        }
        Some(ca) => {
            crate::tls::init();
            let mut roots = RootCertStore::empty();
            for der in crate::tls::pem::certificates(ca).map_err(fail)? {
                roots.add(der).map_err(|e| fail(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| fail(e.to_string()))?;
            let chain = crate::tls::pem::certificates(&files.cert).map_err(fail)?;
            let key = crate::tls::pem::private_key(&files.key).map_err(fail)?;
            // TLS 1.2: a refused client certificate then fails the
            // handshake itself. Under 1.3 the refusal comes after the
            // client's handshake is done, and may reach it as a plain reset.
            ServerConfig::builder_with_protocol_versions(&[&version::TLS12])
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)
                .map_err(|e| fail(e.to_string()))?
        }
    };
    config.alpn_protocols = match opts.http2 {
        true => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        false => vec![b"http/1.1".to_vec()],
    };
    Ok(pingora_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// One accepted connection: TLS first if configured, then HTTP/2 (by ALPN,
/// or by its preface on a plain connection) or HTTP/1.1.
async fn serve(shared: Arc<Shared>, stream: tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
    let Some(acceptor) = &shared.tls else {
        if shared.http2 && h2::has_preface(&stream).await {
            return h2::serve(shared.clone(), stream).await;
        }
        return handlers::serve_connection(shared.clone(), io::SimIo::Plain(stream)).await;
    };
    let accepted = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await;
    let tls = match accepted {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "sim: TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        return h2::serve(shared.clone(), tls).await;
    }
    handlers::serve_connection(shared.clone(), io::SimIo::Tls(Box::new(tls))).await
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut stop = shared.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                shared.counters().connections_accepted += 1;
                let shared = shared.clone();
                let mut stop = shared.shutdown.subscribe();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => {}
                        _ = serve(shared.clone(), stream) => {}
                    }
                    tracing::trace!(%peer, "sim connection closed");
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "sim accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    tracing::debug!(name = %shared.name, "sim server stopped accepting");
}
