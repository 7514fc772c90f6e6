//! Wiring: build the pools from a validated config and run the gateway,
//! admin listener and health prober as Pingora services.

use crate::admin::Admin;
use crate::config::{Config, LogFormat};
use crate::generation::Generation;
use crate::metrics;
use crate::pool::prober;
use crate::proxy::{Connections, Gateway};
use crate::reload::Reloader;
use anyhow::Context;
use async_trait::async_trait;
use pingora_core::apps::http_app::HttpServer;
use pingora_core::listeners::{ListenerConfig, TcpSocketOptions};
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::protocols::TcpKeepalive;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service;
use std::sync::Arc;
use std::time::Duration;

/// Install the tracing subscriber: `RUST_LOG` wins over the config's level.
/// Whatever the filter says, Pingora's own `trace` events are dropped: they
/// print raw request heads (with the pool's key) and response bodies.
pub fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::filter::FilterExt;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{filter, fmt, Layer};

    let env_filter = filter::EnvFilter::try_from_default_env()
        .or_else(|_| filter::EnvFilter::try_new(default_filter(level)))
        .unwrap_or_else(|_| filter::EnvFilter::new("info"));
    // With its hint, the combined filter keeps the level filter's hint, and
    // the `log` records of dependencies (Pingora's `debug!` and `trace!`)
    // are skipped where they are made; without it they were all turned into
    // events and dropped afterwards, some 5,000 instructions per request.
    let no_pingora_trace = filter::filter_fn(|meta| {
        !(*meta.level() == tracing::Level::TRACE && meta.target().starts_with("pingora"))
    })
    .with_max_level_hint(filter::LevelFilter::TRACE);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = fmt::layer().with_ansi(ansi).with_writer(std::io::stderr);
    let layer = match format {
        LogFormat::Text => layer.boxed(),
        LogFormat::Json => layer.json().flatten_event(true).boxed(),
    };
    // A second init (tests, demo) is harmless; keep the first.
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(env_filter.and(no_pingora_trace)))
        .try_init();
}

/// Pingora logs every client hang-up as an error; keep its noise at warn.
/// rustls warns about what clients send (an IP address as SNI, which curl
/// and wrk do), once per handshake: only its errors are logged. lapin warns
/// at each refused reconnect, which the consumer's own line already says.
fn default_filter(level: &str) -> String {
    format!("{level},pingora_core=warn,pingora=warn,rustls=error,lapin=error")
}

/// The client listeners' certificate (checked by config load; read again
/// here, so a file changed since is still caught), its expiry exported.
fn load_listener_tls(config: &Config) -> anyhow::Result<Option<crate::tls::ListenerTls>> {
    let Some(files) = &config.server.tls else {
        return Ok(None);
    };
    let tls = crate::tls::ListenerTls::load(files, std::time::SystemTime::now())
        .map_err(|p| anyhow::anyhow!("server.tls: {}", p.message))?;
    for listener in &config.server.listen {
        metrics::tls_cert_expiry(listener, tls.expires);
    }
    Ok(Some(tls))
}

/// Health checks and DNS refreshes: one task each per pool that needs it.
/// Health checks, DNS refreshes and the sweep of drained servers, for the
/// pools of the generation in force: restarted for the new pools when a
/// reload swaps generations. Also reloads on `SIGHUP`.
struct Background {
    reloader: Arc<Reloader>,
    drain: Arc<crate::drain::Drain>,
    /// Built when some server is first given by name.
    resolver: std::sync::Mutex<Option<Arc<hickory_resolver::TokioResolver>>>,
}

impl Background {
    /// The resolver, built on first need; `None` if it cannot be (logged).
    fn resolver(&self, gen: &Generation) -> Option<Arc<hickory_resolver::TokioResolver>> {
        let names = gen
            .config
            .pools
            .iter()
            .flat_map(|p| &p.servers)
            .any(|s| s.is_name);
        if !names {
            return None;
        }
        let mut slot = self.resolver.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            match crate::pool::dns::resolver(&gen.config.server) {
                Ok(r) => *slot = Some(Arc::new(r)),
                Err(e) => tracing::error!(error = %e, "host names cannot be re-resolved"),
            }
        }
        slot.clone()
    }

    /// The tasks one generation needs.
    fn spawn(&self, gen: &Arc<Generation>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks: Vec<_> = gen
            .pools
            .iter()
            .filter(|p| p.health.is_some())
            .map(|p| tokio::spawn(prober::run(p.clone())))
            .collect();
        tasks.extend(
            gen.pools
                .iter()
                .filter(|p| p.config().load_metrics.is_some())
                .map(|p| tokio::spawn(crate::pool::load_report::run(p.clone()))),
        );
        if let Some(resolver) = self.resolver(gen) {
            tasks.extend(
                gen.pools
                    .iter()
                    .map(|p| tokio::spawn(crate::pool::dns::run(p.clone(), resolver.clone()))),
            );
        }
        tasks.push(tokio::spawn(sweep(gen.clone())));
        tasks
    }
}

/// Every second, forget drained servers (and retired pools' ones) whose
/// last request has ended.
async fn sweep(gen: Arc<Generation>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        for pool in gen.pools.iter().chain(gen.retired.iter()) {
            for gone in pool.sweep_drained() {
                tracing::info!(pool = %pool.name, server = %gone, "drained server removed");
            }
        }
    }
}

#[async_trait]
impl BackgroundService for Background {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let hangups = tokio::spawn(crate::reload::on_hangup(self.reloader.clone()));
        let mut swaps = self.reloader.watch();
        loop {
            let gen = self.reloader.current().load_full();
            let tasks = self.spawn(&gen);
            let stop = tokio::select! {
                _ = shutdown.changed() => true,
                swapped = swaps.changed() => swapped.is_err(),
            };
            for t in tasks {
                t.abort();
            }
            if stop {
                hangups.abort();
                break;
            }
        }
        // Pingora stops the listeners only after a binary upgrade handed
        // them over (a SIGTERM ends the process in the drain): finish what
        // is in flight here, then end the process.
        let grace = self.reloader.current().load().config.server.grace_period;
        self.drain.finish_upgrade(grace).await;
        tracing::info!("upgrade: connections done; exiting");
        std::process::exit(0);
    }
}

/// TCP keep-alive on client connections: a peer that vanished without a
/// FIN (power loss, a dropped NAT entry) is found and closed even while a
/// long stream or WebSocket is quiet.
fn client_socket_options() -> TcpSocketOptions {
    let mut options = TcpSocketOptions::default();
    options.tcp_keepalive = Some(TcpKeepalive {
        idle: Duration::from_secs(60),
        interval: Duration::from_secs(10),
        count: 6,
        #[cfg(target_os = "linux")]
        user_timeout: Duration::ZERO,
    });
    options
}

/// Every listener can be bound: a start-up error naming the address and
/// the reason, rather than a service that silently never listens. Bound
/// the way Pingora binds (with `SO_REUSEADDR`) and released at once.
fn check_listeners(config: &Config) -> anyhow::Result<()> {
    let gateway = config.server.listen.iter().map(|a| ("server.listen", a));
    let admin = std::iter::once(("admin.listen", &config.admin.listen));
    for (key, addr) in gateway.chain(admin) {
        std::net::TcpListener::bind(addr.as_str())
            .with_context(|| format!("{key}: cannot listen on {addr}"))?;
    }
    Ok(())
}

/// Pingora binds each service's listeners in that service's own task and
/// panics there if it cannot (`Failed to build listeners`), leaving the
/// other services running. Should a port be taken between the check above
/// and that bind, end the process instead of serving blind.
fn exit_if_a_listener_fails() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        default(info);
        if message.contains("Failed to build listeners") {
            tracing::error!("a listener could not be bound; stopping");
            std::process::exit(1);
        }
    }));
}

/// Run the gateway on the config read from `path` until a signal stops the
/// process (`SIGHUP` reloads `path`, `SIGTERM` drains, see `drain`). Never
/// returns on success.
pub fn run(path: &std::path::Path, mut config: Config, upgrade: bool) -> anyhow::Result<()> {
    metrics::init();
    crate::descriptors::fit_connections(&mut config);
    let config = Arc::new(config);
    let pools = crate::generation::build_pools(&config)?;
    let listener_tls = load_listener_tls(&config)?;
    let current = Generation::first(config.clone(), pools).into_current();
    let reloader = Reloader::new(path.to_path_buf(), current.clone());
    let drain = crate::drain::Drain::new();
    let cert_expires = listener_tls.as_ref().map(|t| t.expires);
    // In an upgrade the listeners come from the running gateway, bound.
    if !upgrade {
        check_listeners(&config)?;
    }
    exit_if_a_listener_fails();

    let conf = ServerConf {
        threads: config.server.threads,
        // A SIGTERM never reaches Pingora's grace period: the drain
        // (`drain::Signals`) ends the process itself. In an upgrade,
        // Pingora hands the listeners over, stops accepting, then waits
        // this long; the drain ends the process sooner, once idle.
        grace_period_seconds: Some(crate::drain::upgrade_grace(config.server.grace_period)),
        graceful_shutdown_timeout_seconds: Some(1),
        upgrade_sock: config.server.upgrade_sock.display().to_string(),
        ..ServerConf::default()
    };
    let opt = pingora_core::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();

    // A request in flight longer than any route's deadline (plus a
    // minute) was left by a gateway that died: it no longer counts.
    let stale = config
        .routes
        .iter()
        .map(|r| r.timeouts.total)
        .max()
        .unwrap_or_default()
        + std::time::Duration::from_secs(60);
    let limiter = crate::ratelimit::Limiter::new(&config.ratelimit, stale)?;
    let jobs = match &config.jobs {
        Some(cfg) => Some(crate::jobs::Jobs::open(cfg)?),
        None => None,
    };
    let app = Arc::new(Gateway::new(
        current.clone(),
        drain.clone(),
        limiter,
        jobs.clone(),
    ));
    let mut gateway = Service::new(
        "ballast gateway".to_string(),
        Connections::new(app.clone(), listener_tls),
    );
    for addr in &config.server.listen {
        // No read buffer: the gateway reads each request head itself
        // (`connection`), and Pingora then reads into buffers of its own.
        // Pingora's default is 64 KiB per connection, allocated zeroed at
        // accept and held while the connection is open.
        let endpoint = ListenerConfig::tcp(addr.as_str())
            .tcp_socket_options(client_socket_options())
            .l4_buffer(L4BufferSettings::default().read(0));
        gateway.add_listener(endpoint);
    }

    let consumers: Vec<_> = config
        .amqp
        .iter()
        .map(|c| (c.clone(), crate::amqp::State::new(c)))
        .collect();
    let states = consumers.iter().map(|(_, s)| s.clone()).collect();
    let mut admin = Service::new(
        "ballast admin".to_string(),
        HttpServer::new_app(Admin::new(
            reloader.clone(),
            drain.clone(),
            cert_expires,
            states,
        )),
    );
    admin.threads = Some(1);
    admin.add_tcp(&config.admin.listen);

    let background = Background {
        reloader: reloader.clone(),
        drain: drain.clone(),
        resolver: std::sync::Mutex::new(None),
    };
    // A host name needs a resolver: fail at start, not later, if there is none.
    if background.resolver(&current.load()).is_none()
        && config
            .pools
            .iter()
            .flat_map(|p| &p.servers)
            .any(|s| s.is_name)
    {
        anyhow::bail!(
            "host names in pool.servers cannot be re-resolved: no resolver configuration"
        );
    }
    let mut prober = background_service("ballast health checks, DNS and reloads", background);
    prober.threads = Some(1);

    server.add_service(gateway);
    server.add_service(admin);
    server.add_service(prober);
    if let Some(jobs) = jobs {
        let mut runner = background_service(
            "ballast jobs",
            JobRunner {
                app: app.clone(),
                jobs,
            },
        );
        runner.threads = Some(1);
        server.add_service(runner);
    }
    if !consumers.is_empty() {
        let mut amqp = background_service(
            "ballast amqp consumers",
            AmqpConsumers {
                app: app.clone(),
                drain: drain.clone(),
                consumers,
            },
        );
        amqp.threads = Some(1);
        server.add_service(amqp);
    }
    tracing::info!(
        listen = ?config.server.listen,
        admin = %config.admin.listen,
        pools = config.pools.len(),
        routes = config.routes.len(),
        "ballast starting"
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(crate::drain::Signals {
            drain,
            current: current.clone(),
        }),
    });
    std::process::exit(0)
}

/// Runs asynchronous jobs (`[jobs]`) until the gateway stops; jobs still
/// running then are run again at the next start.
struct JobRunner {
    app: Arc<Gateway>,
    jobs: Arc<crate::jobs::Jobs>,
}

#[async_trait::async_trait]
impl BackgroundService for JobRunner {
    async fn start(&self, mut shutdown: pingora_core::server::ShutdownWatch) {
        tokio::select! {
            _ = crate::proxy::jobs::run_jobs(self.app.clone(), self.jobs.clone()) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Consumes each `[[amqp]]` queue until the gateway stops (a drain lets the
/// messages in hand finish first).
struct AmqpConsumers {
    app: Arc<Gateway>,
    drain: Arc<crate::drain::Drain>,
    consumers: Vec<(crate::config::AmqpConsumer, Arc<crate::amqp::State>)>,
}

#[async_trait::async_trait]
impl BackgroundService for AmqpConsumers {
    async fn start(&self, mut shutdown: pingora_core::server::ShutdownWatch) {
        let mut all = tokio::task::JoinSet::new();
        for (cfg, state) in &self.consumers {
            all.spawn(crate::amqp::run(
                self.app.clone(),
                self.drain.clone(),
                cfg.clone(),
                state.clone(),
            ));
        }
        tokio::select! {
            _ = all.join_all() => {}
            _ = shutdown.changed() => {}
        }
    }
}
