//! Raw TOML shape → validated [`Config`], collecting every problem in the file
//! rather than stopping at the first.
//!
//! Each check reports at the span of the value it is about; a value the user
//! left out gets its default, which is always valid, so only cross-key checks
//! (`backoff_base ≤ backoff_max`) and missing required keys ever need a span
//! other than the value's own.

mod amqp;
mod pool;
mod route;

use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::locate::LineIndex;
use super::model::{
    AdminSection, AuthSection, Config, JobsSection, Limits, LogFormat, LogSection,
    RateLimitSection, ServerSection, TlsFiles,
};
use super::raw::{
    Opt, RawAdmin, RawAuth, RawConfig, RawJobs, RawLimits, RawListenerTls, RawLog, RawRateLimit,
    RawServer, StrOrInt,
};
use super::ConfigProblem;
use std::path::PathBuf;

const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
const DEFAULT_UPGRADE_SOCK: &str = "/tmp/ballast-upgrade.sock";
const MIB: u64 = 1024 * 1024;
const KIB: u64 = 1024;

/// How host names in `pool.servers.addr` become addresses.
pub type Lookup = dyn Fn(&str, u16) -> std::io::Result<Vec<SocketAddr>>;

/// The system resolver.
pub fn system_lookup(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    use std::net::ToSocketAddrs;
    Ok((host, port).to_socket_addrs()?.collect())
}

pub(crate) fn validate(
    text: &str,
    raw: &RawConfig,
    lookup: &Lookup,
) -> Result<Config, Vec<ConfigProblem>> {
    let mut c = Checker {
        lines: LineIndex::new(text),
        problems: Vec::new(),
        lookup,
    };
    let config = c.config(raw);
    if c.problems.is_empty() {
        Ok(config)
    } else {
        // file order; problems on the same spot keep the order they were found in
        c.problems.sort_by_key(|p| (p.line, p.column));
        Err(c.problems)
    }
}

/// Collects problems while building the model.
pub(super) struct Checker<'a> {
    lines: LineIndex<'a>,
    problems: Vec<ConfigProblem>,
    lookup: &'a Lookup,
}

impl Checker<'_> {
    fn config(&mut self, raw: &RawConfig) -> Config {
        let server = self.server(&raw.server);
        let admin = self.admin(&raw.admin, &server);
        let limits = self.limits(&raw.limits);
        let log = self.log(&raw.log);
        if raw.pool.is_empty() {
            self.report(
                None,
                "pool",
                "no [[pool]] is defined; at least one is required",
            );
        }
        // With name servers of its own, the gateway resolves names itself
        // at start; without, they must resolve now.
        let resolve_now = raw.server.resolver.as_ref().is_none_or(|r| r.is_empty());
        let pools = self.pools(&raw.pool, resolve_now);
        if raw.route.is_empty() {
            self.report(
                None,
                "route",
                "no [[route]] is defined; at least one is required",
            );
        }
        let dialects = pools.iter().map(|p| p.continuation).collect();
        let routes = self.routes(&raw.route, &raw.pool, dialects);
        let auth = raw.auth.as_ref().and_then(|a| self.auth(a));
        if auth.is_none() {
            for (i, r) in raw.route.iter().enumerate() {
                if let Some(req) = r.get_ref().require_key.as_ref().filter(|b| *b.get_ref()) {
                    self.report(
                        Some(req.span()),
                        format!("route[{i}].require_key"),
                        "needs client keys: add [auth] with keys_file or keys_env",
                    );
                }
            }
        }
        let ratelimit = self.ratelimit(&raw.ratelimit);
        let jobs = raw.jobs.as_ref().and_then(|j| self.jobs(j));
        if jobs.is_none() {
            for (i, r) in raw.route.iter().enumerate() {
                let enabled = r.get_ref().jobs.as_ref().and_then(|j| j.enabled.as_ref());
                if let Some(e) = enabled.filter(|e| *e.get_ref()) {
                    self.report(
                        Some(e.span()),
                        format!("route[{i}].jobs.enabled"),
                        "needs a job store: add [jobs] with dir",
                    );
                }
            }
        }
        let amqp = self.amqp(&raw.amqp);
        Config {
            server,
            admin,
            limits,
            log,
            pools,
            routes,
            auth,
            ratelimit,
            jobs,
            amqp,
        }
    }

    /// `[jobs]`: where jobs are kept and how many.
    fn jobs(&mut self, raw: &RawJobs) -> Option<JobsSection> {
        let dir = match &raw.dir {
            Some(d) if !d.get_ref().trim().is_empty() => PathBuf::from(d.get_ref().trim()),
            Some(d) => {
                self.report(Some(d.span()), "jobs.dir", "must name a directory");
                return None;
            }
            None => {
                self.report(
                    None,
                    "jobs.dir",
                    "missing key `dir`: the directory the job store lives in",
                );
                return None;
            }
        };
        let callback_hosts: Vec<String> = raw
            .callback_hosts
            .iter()
            .flatten()
            .filter_map(|h| {
                let host = h.get_ref().trim().to_ascii_lowercase();
                if host.is_empty() || host.contains('/') || host.contains('@') {
                    self.report(
                        Some(h.span()),
                        "jobs.callback_hosts",
                        format!("'{}' is not a host or host:port", h.get_ref()),
                    );
                    return None;
                }
                Some(host)
            })
            .collect();
        let callback_secret = raw.callback_secret_env.as_ref().and_then(|v| {
            let var = v.get_ref().trim();
            match std::env::var(var) {
                Ok(secret) if !secret.is_empty() => Some(super::model::Secret(secret)),
                _ => {
                    self.report(
                        Some(v.span()),
                        "jobs.callback_secret_env",
                        format!("environment variable `{var}` is not set (or empty)"),
                    );
                    None
                }
            }
        });
        if !callback_hosts.is_empty() && raw.callback_secret_env.is_none() {
            self.report(
                None,
                "jobs.callback_secret_env",
                "callbacks are signed: name the environment variable holding the secret",
            );
        }
        Some(JobsSection {
            callback_hosts,
            callback_secret,
            dir,
            max_queued: u64::from(self.int(
                &raw.max_queued,
                "jobs.max_queued",
                10_000,
                1,
                u32::MAX,
            )),
            max_result_bytes: self.size(&raw.max_result_bytes, "jobs.max_result_bytes", 1 << 20),
            workers: self.int(&raw.workers, "jobs.workers", 4, 1, 1024),
        })
    }

    fn server(&mut self, raw: &RawServer) -> ServerSection {
        let mut listen = Vec::new();
        match &raw.listen {
            None => listen.push(DEFAULT_LISTEN.to_owned()),
            Some(list) if list.get_ref().is_empty() => self.report(
                Some(list.span()),
                "server.listen",
                "must list at least one address, e.g. [\"0.0.0.0:8080\"]",
            ),
            Some(list) => {
                for (i, addr) in list.get_ref().iter().enumerate() {
                    let key = format!("server.listen[{i}]");
                    self.socket_addr(addr, &key);
                    listen.push(addr.get_ref().trim().to_owned());
                }
            }
        }
        let threads = match &raw.threads {
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Some(_) => self.int(&raw.threads, "server.threads", 1, 1, 4096) as usize,
        };
        let grace_period = self.duration(&raw.grace_period, "server.grace_period", secs(5), false);
        let drain_delay = self.duration(&raw.drain_delay, "server.drain_delay", secs(2), false);
        let upgrade_sock = match &raw.upgrade_sock {
            None => std::path::PathBuf::from(DEFAULT_UPGRADE_SOCK),
            Some(p) if p.get_ref().trim().is_empty() => {
                self.report(Some(p.span()), "server.upgrade_sock", "must name a path");
                std::path::PathBuf::from(DEFAULT_UPGRADE_SOCK)
            }
            Some(p) => std::path::PathBuf::from(p.get_ref().trim()),
        };
        let tls = raw.tls.as_ref().and_then(|t| self.listener_tls(t));
        let mut resolver = Vec::new();
        for (i, entry) in raw.resolver.iter().flatten().enumerate() {
            let text = entry.get_ref().trim();
            // A bare address is port 53.
            let addr = text.parse::<SocketAddr>().or_else(|_| {
                text.parse::<std::net::IpAddr>()
                    .map(|ip| SocketAddr::new(ip, 53))
            });
            match addr {
                Ok(a) => resolver.push(a),
                Err(_) => self.report(
                    Some(entry.span()),
                    format!("server.resolver[{i}]"),
                    format!("'{text}' is not a name server address, e.g. \"10.0.0.2\" or \"127.0.0.1:5353\""),
                ),
            }
        }
        let mut trusted_proxies = Vec::new();
        for (i, entry) in raw.trusted_proxies.iter().flatten().enumerate() {
            let text = entry.get_ref().trim();
            // A bare address is a network of one.
            let net = text
                .parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match net {
                Ok(net) => trusted_proxies.push(net.trunc()),
                Err(_) => self.report(
                    Some(entry.span()),
                    format!("server.trusted_proxies[{i}]"),
                    format!("'{text}' is not an address or CIDR, e.g. \"10.0.0.0/8\""),
                ),
            }
        }
        ServerSection {
            listen,
            threads,
            grace_period,
            drain_delay,
            upgrade_sock,
            trusted_proxies,
            tls,
            resolver,
        }
    }

    /// `server.tls`: both files given, readable, matching, and the
    /// certificate valid now.
    fn listener_tls(&mut self, raw: &RawListenerTls) -> Option<TlsFiles> {
        let table = span_of(&raw.cert).or(span_of(&raw.key));
        let file = |c: &mut Self, v: &Opt<String>, key: &str| match v {
            None => {
                c.report(
                    table.clone(),
                    key,
                    "missing; write tls = { cert = \"cert.pem\", key = \"key.pem\" }",
                );
                None
            }
            Some(p) if p.get_ref().trim().is_empty() => {
                c.report(Some(p.span()), key, "must name a PEM file");
                None
            }
            Some(p) => Some(std::path::PathBuf::from(p.get_ref().trim())),
        };
        let cert = file(self, &raw.cert, "server.tls.cert");
        let key = file(self, &raw.key, "server.tls.key");
        let files = TlsFiles {
            cert: cert?,
            key: key?,
        };
        if let Err(p) =
            crate::tls::listener::server_config(&files, Some(std::time::SystemTime::now()))
        {
            let (key, span) = match p.which {
                crate::tls::Which::Cert => ("server.tls.cert", span_of(&raw.cert)),
                crate::tls::Which::Key => ("server.tls.key", span_of(&raw.key)),
            };
            self.report(span, key, p.message);
        }
        Some(files)
    }

    /// `[auth]`: the key file (or environment variable holding its text),
    /// read and checked now.
    fn auth(&mut self, raw: &RawAuth) -> Option<AuthSection> {
        let (source, text) = match (&raw.keys_file, &raw.keys_env) {
            (Some(file), None) => {
                let path = file.get_ref().trim();
                match std::fs::read_to_string(path) {
                    Ok(text) => (path.to_owned(), text),
                    Err(e) => {
                        self.report(
                            Some(file.span()),
                            "auth.keys_file",
                            format!("cannot read key file '{path}': {e}"),
                        );
                        return None;
                    }
                }
            }
            (None, Some(var)) => {
                let name = var.get_ref().trim();
                match std::env::var(name) {
                    Ok(text) => (format!("${name}"), text),
                    Err(_) => {
                        self.report(
                            Some(var.span()),
                            "auth.keys_env",
                            format!("environment variable `{name}` is not set"),
                        );
                        return None;
                    }
                }
            }
            (Some(f), Some(_)) => {
                self.report(
                    Some(f.span()),
                    "auth",
                    "set keys_file or keys_env, not both",
                );
                return None;
            }
            (None, None) => {
                self.report(
                    None,
                    "auth",
                    "set keys_file (or keys_env) to the client keys",
                );
                return None;
            }
        };
        let span = span_of(&raw.keys_file).or(span_of(&raw.keys_env));
        let key = if raw.keys_file.is_some() {
            "auth.keys_file"
        } else {
            "auth.keys_env"
        };
        match crate::keys::KeySet::parse(&source, &text) {
            Ok(keys) => Some(AuthSection {
                source,
                keys: std::sync::Arc::new(keys),
            }),
            Err(problems) => {
                for p in problems {
                    self.report(span.clone(), key, p);
                }
                None
            }
        }
    }

    /// `[ratelimit]`: per process, or shared through Redis.
    fn ratelimit(&mut self, raw: &RawRateLimit) -> RateLimitSection {
        let redis = raw.redis.as_ref().and_then(|r| {
            let url = r.get_ref().trim();
            if url.starts_with("redis://") || url.starts_with("rediss://") {
                Some(url.to_owned())
            } else {
                // The value may hold a password: not repeated here.
                self.report(
                    Some(r.span()),
                    "ratelimit.redis",
                    "must be a redis:// (or rediss://) URL, e.g. \"redis://10.0.0.5:6379/0\"",
                );
                None
            }
        });
        RateLimitSection {
            redis,
            fail_open: raw.fail_open.as_ref().is_none_or(|b| *b.get_ref()),
            timeout: self.duration(
                &raw.timeout,
                "ratelimit.timeout",
                Duration::from_millis(100),
                false,
            ),
        }
    }

    fn admin(&mut self, raw: &RawAdmin, server: &ServerSection) -> AdminSection {
        let listen = match &raw.listen {
            None => DEFAULT_ADMIN_LISTEN.to_owned(),
            Some(addr) => {
                if let Some(parsed) = self.socket_addr(addr, "admin.listen") {
                    let clash = server
                        .listen
                        .iter()
                        .any(|l| l.parse::<SocketAddr>().ok() == Some(parsed));
                    if clash {
                        self.report(
                            Some(addr.span()),
                            "admin.listen",
                            format!("{parsed} is also in server.listen; use a separate port"),
                        );
                    }
                }
                addr.get_ref().trim().to_owned()
            }
        };
        AdminSection { listen }
    }

    fn limits(&mut self, raw: &RawLimits) -> Limits {
        Limits {
            max_request_body: self.size(&raw.max_request_body, "limits.max_request_body", 16 * MIB),
            max_header_bytes: self.size(&raw.max_header_bytes, "limits.max_header_bytes", 32 * KIB),
            header_timeout: self.duration(
                &raw.header_timeout,
                "limits.header_timeout",
                secs(10),
                true,
            ),
            max_decompression_ratio: self.int64(
                &raw.max_decompression_ratio,
                "limits.max_decompression_ratio",
                200,
                1,
            ),
            body_timeout: self.duration(&raw.body_timeout, "limits.body_timeout", secs(30), true),
            keepalive_idle: self.duration(
                &raw.keepalive_idle,
                "limits.keepalive_idle",
                secs(60),
                true,
            ),
            max_connections: self.int(
                &raw.max_connections,
                "limits.max_connections",
                10_000,
                1,
                u32::MAX,
            ),
            max_buffered_bytes: self.size(
                &raw.max_buffered_bytes,
                "limits.max_buffered_bytes",
                512 * MIB,
            ),
        }
    }

    fn log(&mut self, raw: &RawLog) -> LogSection {
        let format = match &raw.format {
            None => LogFormat::Text,
            Some(f) => match f.get_ref().trim() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    self.report(
                        Some(f.span()),
                        "log.format",
                        format!("unknown log format '{other}'; expected \"text\" or \"json\""),
                    );
                    LogFormat::Text
                }
            },
        };
        let level = match &raw.level {
            None => "info".to_owned(),
            Some(l) => {
                let level = l.get_ref().trim();
                if level.is_empty() {
                    self.report(
                        Some(l.span()),
                        "log.level",
                        "must not be empty, e.g. \"info\"",
                    );
                } else if let Err(e) = tracing_subscriber::EnvFilter::try_new(level) {
                    self.report(
                        Some(l.span()),
                        "log.level",
                        format!("invalid log filter '{level}': {e}"),
                    );
                }
                level.to_owned()
            }
        };
        LogSection { format, level }
    }

    // ---- helpers shared by the section checks ----

    pub(super) fn report(
        &mut self,
        span: Option<Range<usize>>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) {
        let problem = self.lines.problem(span, key, message);
        self.problems.push(problem);
    }

    /// A `SocketAddr` (`ip:port`) such as a listener address.
    fn socket_addr(&mut self, addr: &Spanned<String>, key: &str) -> Option<SocketAddr> {
        let text = addr.get_ref().trim();
        match text.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.report(
                    Some(addr.span()),
                    key,
                    format!(
                        "'{text}' is not a valid address; write ip:port, e.g. \"127.0.0.1:8080\""
                    ),
                );
                None
            }
        }
    }

    /// A duration with units (`"250ms"`, `"30s"`, `"10m"`); `positive`
    /// rejects zero.
    pub(super) fn duration(
        &mut self,
        value: &Opt<String>,
        key: &str,
        default: Duration,
        positive: bool,
    ) -> Duration {
        let Some(value) = value else { return default };
        let text = value.get_ref().trim();
        match humantime::parse_duration(text) {
            Ok(d) if positive && d.is_zero() => {
                self.report(Some(value.span()), key, "must be greater than 0");
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.report(
                    Some(value.span()),
                    key,
                    format!(
                        "invalid duration '{text}': {e}; write a number with a unit, \
                         e.g. \"250ms\", \"30s\", \"10m\""
                    ),
                );
                default
            }
        }
    }

    /// A byte size: a string with units (`"16MiB"`, `"32KiB"`) or a bare
    /// integer (bytes); must be greater than 0.
    pub(super) fn size(&mut self, value: &Opt<StrOrInt>, key: &str, default: u64) -> u64 {
        let Some(value) = value else { return default };
        let parsed = match value.get_ref() {
            StrOrInt::Int(n) => u64::try_from(*n).map_err(|_| format!("invalid size {n}")),
            StrOrInt::Str(s) => s
                .trim()
                .parse::<bytesize::ByteSize>()
                .map(|b| b.as_u64())
                .map_err(|e| {
                    format!(
                        "invalid size '{}': {e}; write a number with a unit, \
                         e.g. \"16MiB\", \"32KiB\", or a number of bytes",
                        s.trim()
                    )
                }),
        };
        match parsed {
            Ok(0) => {
                self.report(Some(value.span()), key, "must be greater than 0");
                default
            }
            Ok(n) => n,
            Err(message) => {
                self.report(Some(value.span()), key, message);
                default
            }
        }
    }

    /// An integer in `min..=max` that fits a `u32`.
    pub(super) fn int(
        &mut self,
        value: &Opt<i64>,
        key: &str,
        default: u32,
        min: u32,
        max: u32,
    ) -> u32 {
        let Some(value) = value else { return default };
        let n = *value.get_ref();
        match u32::try_from(n) {
            Ok(n) if n >= min && n <= max => n,
            _ => {
                let message = if max == u32::MAX {
                    format!("must be at least {min} (got {n})")
                } else {
                    format!("must be between {min} and {max} (got {n})")
                };
                self.report(Some(value.span()), key, message);
                default
            }
        }
    }

    /// An integer ≥ `min` (which must be ≥ 0).
    fn int64(&mut self, value: &Opt<i64>, key: &str, default: u64, min: u64) -> u64 {
        let Some(value) = value else { return default };
        let n = *value.get_ref();
        match u64::try_from(n) {
            Ok(n) if n >= min => n,
            _ => {
                self.report(
                    Some(value.span()),
                    key,
                    format!("must be at least {min} (got {n})"),
                );
                default
            }
        }
    }

    /// An optional string that, when given, must not be empty.
    pub(super) fn non_empty(&mut self, value: &Opt<String>, key: &str) -> Option<String> {
        let value = value.as_ref()?;
        let text = value.get_ref().trim();
        if text.is_empty() {
            self.report(Some(value.span()), key, "must not be empty");
        }
        Some(text.to_owned())
    }
}

pub(super) fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The span of an optional value.
pub(super) fn span_of<T>(value: &Opt<T>) -> Option<Range<usize>> {
    value.as_ref().map(Spanned::span)
}
