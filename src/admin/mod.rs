//! The admin listener: `/` (the status page), `/metrics` (Prometheus),
//! `/healthz` (alive), `/readyz` (every route has a usable server),
//! `/status` (JSON view of every pool and server) and `POST /reload` (read
//! the config again).

use crate::drain::Drain;
use crate::generation::{Current, Generation};
use crate::metrics;
use crate::pool::Pool;
use crate::reload::Reloader;
use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use std::sync::Arc;
use std::time::Instant;

/// The status page: one self-contained file (no external assets) that
/// polls `/status` and draws it.
const PAGE: &str = include_str!("page.html");

pub struct Admin {
    reloader: Arc<Reloader>,
    drain: Arc<Drain>,
    current: Current,
    /// The client listeners' certificate expiry (Unix seconds), with TLS.
    cert_expires: Option<i64>,
    started: Instant,
    started_at: String,
    /// `[[amqp]]` consumers' connections.
    amqp: Vec<Arc<crate::amqp::State>>,
}

impl Admin {
    pub fn new(
        reloader: Arc<Reloader>,
        drain: Arc<Drain>,
        cert_expires: Option<i64>,
        amqp: Vec<Arc<crate::amqp::State>>,
    ) -> Self {
        Admin {
            amqp,
            drain,
            current: reloader.current().clone(),
            reloader,
            cert_expires,
            started: Instant::now(),
            started_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        }
    }

    /// `POST /reload`: 200 with what changed, or 400 with every problem.
    async fn reload(&self) -> Response<Vec<u8>> {
        match self.reloader.reload("POST /reload").await {
            Ok(changes) => {
                let body = serde_json::json!({"result": "ok", "changes": changes});
                respond(200, "application/json", format!("{body}\n"))
            }
            Err(problems) => {
                let body = serde_json::json!({"result": "error", "problems": problems});
                respond(400, "application/json", format!("{body}\n"))
            }
        }
    }

    /// The client listeners' TLS: certificate file and expiry.
    fn tls_json(&self, gen: &Generation) -> serde_json::Value {
        match (&gen.config.server.tls, self.cert_expires) {
            (Some(files), Some(expires)) => serde_json::json!({
                "listeners": gen.config.server.listen,
                "cert": files.cert.display().to_string(),
                "expires_at": crate::tls::pem::rfc3339(expires),
                "expires_at_unix": expires,
            }),
            _ => serde_json::Value::Null,
        }
    }

    /// Routes whose pool has no usable server right now.
    fn unready_routes(gen: &Generation, now: Instant) -> Vec<&str> {
        gen.config
            .routes
            .iter()
            .filter(|r| !gen.pools[r.pool].has_usable(now))
            .map(|r| r.name.as_str())
            .collect()
    }

    fn status_json(&self, now: Instant) -> serde_json::Value {
        let gen = self.current.load_full();
        let pools: Vec<_> = gen.pools.iter().map(|p| p.snapshot(now)).collect();
        let (sse, websocket) = metrics::streams_open();
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "started_at": self.started_at,
            // Readers turn the running totals below into rates over this.
            "uptime_seconds": now.saturating_duration_since(self.started).as_secs_f64(),
            "generation": gen.number,
            "draining": self.drain.is_draining(),
            "last_reload": self.reloader.last(),
            "streams": {"sse": sse, "websocket": websocket},
            "pools": pools,
            "routes": gen.config.routes.iter().map(|r| serde_json::json!({
                "name": r.name,
                "pool": gen.pools[r.pool].name,
            })).collect::<Vec<_>>(),
            "unready_routes": Admin::unready_routes(&gen, now),
            "tls": self.tls_json(&gen),
            "keys": gen.config.auth.as_ref().map(|a| a.keys.status()),
            "amqp": self.amqp.iter().map(|a| a.json(now)).collect::<Vec<_>>(),
        })
    }

    /// Gauges that describe state are read from the pools at scrape time,
    /// so they can never drift from what selection sees.
    fn refresh_gauges(&self, now: Instant) {
        let set = |pool: &Pool, s: &crate::pool::Server| {
            let up = s.availability(now).is_usable();
            let cooling = s.cooldown_left(now).as_secs_f64();
            metrics::set_server_state(&pool.name, &s.addr, s.outstanding(), up, cooling);
        };
        for pool in &self.current.load().pools {
            // Draining members too: their requests in flight still count.
            pool.for_each_server(|s| set(pool, s));
            if let Some(blocks) = pool.prefix_blocks() {
                metrics::prefix_blocks(&pool.name, blocks);
            }
        }
    }
}

fn respond(status: u16, content_type: &str, body: String) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body.into_bytes())
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

/// The status page, allowed to talk to this listener only.
fn page() -> Response<Vec<u8>> {
    let mut res = respond(200, "text/html; charset=utf-8", PAGE.into());
    let headers = res.headers_mut();
    headers.insert(
        http::header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    res
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let now = Instant::now();
        let path = session.req_header().uri.path().to_owned();
        let post = session.req_header().method == http::Method::POST;
        match path.as_str() {
            "/" => page(),
            "/reload" if post => self.reload().await,
            "/reload" => respond(
                405,
                "text/plain",
                "POST /reload reloads the config\n".into(),
            ),
            "/metrics" => {
                self.refresh_gauges(now);
                respond(200, "text/plain; version=0.0.4", metrics::render())
            }
            "/healthz" => respond(200, "text/plain", "ok\n".into()),
            "/readyz" if self.drain.is_draining() => {
                respond(503, "text/plain", "shutting down\n".into())
            }
            "/readyz" => {
                let gen = self.current.load_full();
                let unready = Admin::unready_routes(&gen, now);
                // A consumer without its broker is reported, but HTTP
                // traffic is still served: readiness stays with the routes.
                let amqp: String = self
                    .amqp
                    .iter()
                    .filter_map(|a| a.problem(now))
                    .map(|p| p + "\n")
                    .collect();
                if unready.is_empty() {
                    respond(200, "text/plain", format!("ready\n{amqp}"))
                } else {
                    respond(
                        503,
                        "text/plain",
                        format!(
                            "no usable server for routes: {}\n{amqp}",
                            unready.join(", ")
                        ),
                    )
                }
            }
            "/status" => respond(200, "application/json", self.status_json(now).to_string()),
            _ => respond(
                404,
                "text/plain",
                "not found; try / /metrics /healthz /readyz /status, POST /reload\n".into(),
            ),
        }
    }
}
