//! `[[pool]]` checks: names, servers (resolved now), health, queue.

use std::collections::HashMap;
use std::net::SocketAddr;

use toml::Spanned;

use super::{secs, span_of, Checker, Lookup};
use crate::config::model::{
    AffinityConfig, Balance, HealthConfig, Http2Mode, LoadMetricsConfig, PoolConfig, QueueConfig,
    ServerConfig,
};
use crate::config::raw::Opt;
use crate::config::raw::{RawAffinity, RawHealth, RawLoadMetrics, RawPool, RawQueue, RawUpstream};
use crate::openai::continuation::Dialect;

impl Checker<'_> {
    pub(super) fn pools(&mut self, raw: &[Spanned<RawPool>], resolve_now: bool) -> Vec<PoolConfig> {
        // name → line of its first definition
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut pools = Vec::new();
        for (i, pool) in raw.iter().enumerate() {
            let name = self.pool_name(i, pool, &mut seen);
            pools.push(self.pool(i, &name, pool, resolve_now));
        }
        pools
    }

    fn pool_name(
        &mut self,
        i: usize,
        pool: &Spanned<RawPool>,
        seen: &mut HashMap<String, usize>,
    ) -> String {
        let key = format!("pool[{i}].name");
        let Some(name) = &pool.get_ref().name else {
            self.report(
                Some(pool.span()),
                key,
                "missing key `name`; every pool needs a unique name",
            );
            return String::new();
        };
        let text = name.get_ref().trim().to_owned();
        if text.is_empty() {
            self.report(Some(name.span()), key, "pool name must not be empty");
        } else if let Some(line) = seen.get(&text) {
            let message = format!("duplicate pool name '{text}' (first defined on line {line})");
            self.report(Some(name.span()), key, message);
        } else {
            let (line, _) = self.lines.line_col(name.span().start);
            seen.insert(text.clone(), line);
        }
        text
    }

    fn pool(
        &mut self,
        i: usize,
        name: &str,
        spanned: &Spanned<RawPool>,
        resolve_now: bool,
    ) -> PoolConfig {
        let raw = spanned.get_ref();
        let key = |field: &str| format!("pool[{i}].{field}");
        let max_fails = self.int(&raw.max_fails, &key("max_fails"), 3, 0, u32::MAX);
        let fail_timeout = self.duration(&raw.fail_timeout, &key("fail_timeout"), secs(30), true);
        let max_conns = self.int(&raw.max_conns, &key("max_conns"), 0, 0, u32::MAX);
        let host = self.non_empty(&raw.host, &key("host"));
        if let (Some(h), Some(value)) = (&host, &raw.host) {
            if !h.is_empty() && h.parse::<http::uri::Authority>().is_err() {
                self.report(
                    Some(value.span()),
                    key("host"),
                    format!("'{h}' is not a host name; write host or host:port, e.g. \"api.example.com\""),
                );
            }
        }
        let tls = raw.tls.as_ref().is_some_and(|t| *t.get_ref());
        let upstream_tls = self.upstream_tls(i, raw, tls);
        let http2 = self.http2(&raw.http2, &key("http2"));
        let api_key_env = self.api_key_env(&raw.api_key_env, &key("api_key_env"));
        let api_key_header = self.api_key_header(raw, &key("api_key_header"));
        let resolve_interval = self.duration(
            &raw.resolve_interval,
            &key("resolve_interval"),
            secs(30),
            true,
        );
        let (balance, affinity) = self.balance(i, raw);
        let affinity_header = raw.affinity_header.as_ref().and_then(|h| {
            match http::HeaderName::from_bytes(h.get_ref().trim().as_bytes()) {
                Ok(name) => Some(name),
                Err(_) => {
                    self.report(
                        Some(h.span()),
                        key("affinity_header"),
                        format!("'{}' is not a valid header name", h.get_ref()),
                    );
                    None
                }
            }
        });
        let continuation = match &raw.continuation {
            None => Dialect::None,
            Some(c) => Dialect::parse(c.get_ref()).unwrap_or_else(|| {
                self.report(
                    Some(c.span()),
                    key("continuation"),
                    format!(
                        "'{}' is not \"none\", \"vllm\" (also \"sglang\") or \"deepseek\"",
                        c.get_ref()
                    ),
                );
                Dialect::None
            }),
        };
        let probe_interval = raw.probe_interval.as_ref().map(|_| {
            let d = self.duration(
                &raw.probe_interval,
                &key("probe_interval"),
                fail_timeout,
                true,
            );
            if d > fail_timeout {
                self.report(
                    span_of(&raw.probe_interval),
                    key("probe_interval"),
                    "must not be longer than fail_timeout (the longest an ejection lasts)",
                );
            }
            d.min(fail_timeout)
        });
        let load_metrics = raw.load_metrics.as_ref().map(|l| self.load_metrics(i, l));
        let health = raw.health.as_ref().map(|h| self.health(i, h));
        let queue = self.queue(i, raw.queue.as_ref());

        let mut servers = Vec::new();
        match &raw.servers {
            None => self.report(
                Some(spanned.span()),
                key("servers"),
                format!("pool '{name}' has no servers; add at least one [[pool.servers]]"),
            ),
            Some(list) if list.get_ref().is_empty() => self.report(
                Some(list.span()),
                key("servers"),
                format!("pool '{name}' has no servers"),
            ),
            Some(list) => {
                // addr → index of its first occurrence
                let mut seen: HashMap<String, usize> = HashMap::new();
                for (j, server) in list.get_ref().iter().enumerate() {
                    let Some(s) = self.upstream(i, j, server, max_conns, resolve_now) else {
                        continue;
                    };
                    if let Some(first) = seen.get(&s.addr) {
                        self.report(
                            span_of(&server.get_ref().addr),
                            format!("pool[{i}].servers[{j}].addr"),
                            format!(
                                "'{}' is already listed as pool[{i}].servers[{first}]; \
                                 raise its weight instead",
                                s.addr
                            ),
                        );
                    } else {
                        seen.insert(s.addr.clone(), j);
                    }
                    servers.push(s);
                }
            }
        }

        PoolConfig {
            name: name.to_owned(),
            max_fails,
            fail_timeout,
            max_conns,
            host,
            tls,
            sni: upstream_tls.sni,
            ca_file: upstream_tls.ca_file,
            client_cert: upstream_tls.client_cert,
            client_key: upstream_tls.client_key,
            http2,
            api_key_env,
            api_key_header,
            resolve_interval,
            balance,
            continuation,
            probe_interval,
            affinity_header,
            affinity,
            load_metrics,
            health,
            queue,
            servers,
        }
    }

    fn api_key_env(&mut self, value: &Option<Spanned<String>>, key: &str) -> Option<String> {
        let value = value.as_ref()?;
        let var = value.get_ref().trim();
        let problem = if var.is_empty() {
            Some("must name an environment variable".to_owned())
        } else {
            match std::env::var_os(var) {
                None => Some(format!("environment variable `{var}` is not set")),
                Some(v) if v.is_empty() => Some(format!("environment variable `{var}` is empty")),
                Some(_) => None,
            }
        };
        if let Some(message) = problem {
            self.report(Some(value.span()), key, message);
        }
        Some(var.to_owned())
    }

    /// `sni`, `ca_file`, `client_cert` and `client_key`: only with `tls`,
    /// and every file readable, of the right kind, matching and not expired.
    fn upstream_tls(&mut self, i: usize, raw: &RawPool, tls: bool) -> PoolTls {
        let key = |field: &str| format!("pool[{i}].{field}");
        let mut out = PoolTls::default();
        let fields = [
            ("sni", &raw.sni),
            ("ca_file", &raw.ca_file),
            ("client_cert", &raw.client_cert),
            ("client_key", &raw.client_key),
        ];
        if !tls {
            for (field, value) in fields {
                if let Some(v) = value {
                    self.report(
                        Some(v.span()),
                        key(field),
                        format!("`{field}` applies only to a TLS pool; add `tls = true`"),
                    );
                }
            }
            return out;
        }
        out.sni = self.non_empty(&raw.sni, &key("sni"));
        if let (Some(name), Some(v)) = (&out.sni, &raw.sni) {
            if !name.is_empty() && pingora_rustls::ServerName::try_from(name.as_str()).is_err() {
                self.report(
                    Some(v.span()),
                    key("sni"),
                    format!("'{name}' is not a DNS name or IP address"),
                );
            }
        }
        let path = |c: &mut Self, v: &Opt<String>, field: &str| {
            c.non_empty(v, &key(field))
                .filter(|p| !p.is_empty())
                .map(std::path::PathBuf::from)
        };
        out.ca_file = path(self, &raw.ca_file, "ca_file");
        if let (Some(ca), Some(v)) = (&out.ca_file, &raw.ca_file) {
            if let Err(e) = crate::tls::upstream::load_ca(ca) {
                self.report(Some(v.span()), key("ca_file"), e);
            }
        }
        out.client_cert = path(self, &raw.client_cert, "client_cert");
        out.client_key = path(self, &raw.client_key, "client_key");
        match (&out.client_cert, &out.client_key) {
            (Some(cert), Some(k)) => {
                let now = std::time::SystemTime::now();
                if let Err(p) = crate::tls::upstream::client_identity(cert, k, now) {
                    let (field, value) = match p.which {
                        crate::tls::Which::Cert => ("client_cert", &raw.client_cert),
                        crate::tls::Which::Key => ("client_key", &raw.client_key),
                    };
                    self.report(span_of(value), key(field), p.message);
                }
            }
            (Some(_), None) => self.report(
                span_of(&raw.client_cert),
                key("client_cert"),
                "needs `client_key` (the certificate's private key) too",
            ),
            (None, Some(_)) => self.report(
                span_of(&raw.client_key),
                key("client_key"),
                "needs `client_cert` (the certificate it belongs to) too",
            ),
            (None, None) => {}
        }
        out
    }

    fn http2(&mut self, value: &Opt<String>, key: &str) -> Http2Mode {
        let Some(v) = value else {
            return Http2Mode::Auto;
        };
        match v.get_ref().trim() {
            "auto" => Http2Mode::Auto,
            "never" => Http2Mode::Never,
            "always" => Http2Mode::Always,
            other => {
                self.report(
                    Some(v.span()),
                    key,
                    format!(
                        "unknown http2 mode '{other}'; expected \"auto\", \"never\" or \"always\""
                    ),
                );
                Http2Mode::Auto
            }
        }
    }

    /// The header a pool's key goes in: a valid name, not one the gateway
    /// owns, and only with `api_key_env`.
    fn api_key_header(&mut self, raw: &RawPool, key: &str) -> http::HeaderName {
        let default = http::header::AUTHORIZATION;
        let Some(v) = &raw.api_key_header else {
            return default;
        };
        let text = v.get_ref().trim().to_ascii_lowercase();
        let name = match http::HeaderName::from_bytes(text.as_bytes()) {
            Ok(name) => name,
            Err(_) => {
                self.report(
                    Some(v.span()),
                    key,
                    format!("'{text}' is not a header name, e.g. \"x-api-key\""),
                );
                return default;
            }
        };
        if crate::proxy::gateway_owned_header(&name) {
            self.report(
                Some(v.span()),
                key,
                format!("'{text}' is set by the gateway itself; choose another header"),
            );
        } else if raw.api_key_env.is_none() {
            self.report(
                Some(v.span()),
                key,
                "needs `api_key_env` (the variable holding the key)",
            );
        }
        name
    }

    fn health(&mut self, i: usize, raw: &RawHealth) -> HealthConfig {
        let key = |field: &str| format!("pool[{i}].health.{field}");
        let path = match &raw.path {
            None => "/health".to_owned(),
            Some(p) => {
                let path = p.get_ref().trim();
                if !path.starts_with('/') {
                    self.report(
                        Some(p.span()),
                        key("path"),
                        format!("health path '{path}' must start with '/'"),
                    );
                }
                path.to_owned()
            }
        };
        HealthConfig {
            path,
            interval: self.duration(&raw.interval, &key("interval"), secs(5), true),
            timeout: self.duration(&raw.timeout, &key("timeout"), secs(1), true),
            rise: self.int(&raw.rise, &key("rise"), 2, 1, u32::MAX),
            fall: self.int(&raw.fall, &key("fall"), 3, 1, u32::MAX),
        }
    }

    /// `[pool.load_metrics]`: defaults are vLLM's metric names.
    fn load_metrics(&mut self, i: usize, raw: &RawLoadMetrics) -> LoadMetricsConfig {
        let key = |field: &str| format!("pool[{i}].load_metrics.{field}");
        let interval = self.duration(&raw.interval, &key("interval"), secs(1), true);
        let max_age = self.duration(&raw.max_age, &key("max_age"), interval * 3, true);
        let name = |c: &mut Self, v: &Opt<String>, field: &str, default: &str| match v {
            None => default.to_owned(),
            Some(n) => {
                let text = n.get_ref().trim();
                let ok = !text.is_empty()
                    && text
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':');
                if !ok {
                    c.report(
                        Some(n.span()),
                        key(field),
                        format!("'{text}' is not a Prometheus metric name"),
                    );
                }
                text.to_owned()
            }
        };
        let running = name(self, &raw.running, "running", "vllm:num_requests_running");
        let waiting = name(self, &raw.waiting, "waiting", "vllm:num_requests_waiting");
        let kv_usage = name(self, &raw.kv_usage, "kv_usage", "vllm:kv_cache_usage_perc");
        let path = match &raw.path {
            None => "/metrics".to_owned(),
            Some(p) if p.get_ref().starts_with('/') => p.get_ref().clone(),
            Some(p) => {
                self.report(Some(p.span()), key("path"), "must start with '/'");
                "/metrics".to_owned()
            }
        };
        LoadMetricsConfig {
            path,
            interval,
            max_age,
            running,
            waiting,
            kv_usage,
        }
    }

    /// `pool.balance` and its `[pool.affinity]`.
    fn balance(&mut self, i: usize, raw: &RawPool) -> (Balance, AffinityConfig) {
        let key = |field: &str| format!("pool[{i}].{field}");
        let affinity = RawAffinity::default();
        let a = raw.affinity.as_ref().unwrap_or(&affinity);
        let akey = |field: &str| format!("pool[{i}].affinity.{field}");
        let config = AffinityConfig {
            min_match: self.fraction(&a.min_match, &akey("min_match"), 0.5, Some(1.0)),
            balance_abs: self.int(&a.balance_abs, &akey("balance_abs"), 4, 0, u32::MAX),
            balance_rel: self.fraction(&a.balance_rel, &akey("balance_rel"), 1.5, None),
            entries: self.int(&a.entries, &akey("entries"), 65_536, 1, 1 << 24) as usize,
        };
        let balance = match raw.balance.as_ref().map(|b| (b, b.get_ref().trim())) {
            None | Some((_, "least_outstanding")) => {
                // Session affinity uses the overload escape only.
                let unused = |a: &RawAffinity| {
                    let escape_only = raw.affinity_header.is_some();
                    span_of(&a.min_match)
                        .or(span_of(&a.entries))
                        .or(if escape_only {
                            None
                        } else {
                            span_of(&a.balance_abs).or(span_of(&a.balance_rel))
                        })
                };
                if let Some(span) = raw.affinity.as_ref().and_then(unused) {
                    self.report(
                        Some(span),
                        key("affinity"),
                        "only used with balance = \"prefix_affinity\" (balance_abs and balance_rel also with affinity_header)",
                    );
                }
                Balance::LeastOutstanding
            }
            Some((_, "prefix_affinity")) => Balance::PrefixAffinity(config.clone()),
            Some((b, other)) => {
                self.report(
                    Some(b.span()),
                    key("balance"),
                    format!("'{other}' is not \"least_outstanding\" or \"prefix_affinity\""),
                );
                Balance::LeastOutstanding
            }
        };
        (balance, config)
    }

    fn queue(&mut self, i: usize, raw: Option<&RawQueue>) -> QueueConfig {
        let Some(raw) = raw else {
            return QueueConfig {
                max_depth: 100,
                max_wait: secs(10),
            };
        };
        let key = |field: &str| format!("pool[{i}].queue.{field}");
        QueueConfig {
            max_depth: self.int(&raw.max_depth, &key("max_depth"), 100, 0, u32::MAX),
            max_wait: self.duration(&raw.max_wait, &key("max_wait"), secs(10), true),
        }
    }

    /// One `[[pool.servers]]` entry; `None` when its address is unusable.
    fn upstream(
        &mut self,
        i: usize,
        j: usize,
        spanned: &Spanned<RawUpstream>,
        pool_max_conns: u32,
        resolve_now: bool,
    ) -> Option<ServerConfig> {
        let raw = spanned.get_ref();
        let key = |field: &str| format!("pool[{i}].servers[{j}].{field}");
        let weight = self.int(&raw.weight, &key("weight"), 1, 1, u32::MAX);
        let max_conns = self.int(
            &raw.max_conns,
            &key("max_conns"),
            pool_max_conns,
            0,
            u32::MAX,
        );
        let Some(addr) = &raw.addr else {
            self.report(
                Some(spanned.span()),
                key("addr"),
                "missing key `addr` (host:port of the backend)",
            );
            return None;
        };
        let text = addr.get_ref().trim().to_owned();
        let lookup: &Lookup = if resolve_now {
            self.lookup
        } else {
            &|_, _| Ok(Vec::new())
        };
        match resolve(&text, lookup, resolve_now) {
            Ok(Resolved {
                host,
                port,
                is_name,
                addrs,
            }) => Some(ServerConfig {
                addr: text,
                host,
                port,
                is_name,
                resolved: addrs,
                weight,
                max_conns,
            }),
            Err(message) => {
                self.report(Some(addr.span()), key("addr"), message);
                None
            }
        }
    }
}

/// A pool's checked TLS keys.
#[derive(Default)]
struct PoolTls {
    sni: Option<String>,
    ca_file: Option<std::path::PathBuf>,
    client_cert: Option<std::path::PathBuf>,
    client_key: Option<std::path::PathBuf>,
}

/// A server address taken apart and looked up.
pub(crate) struct Resolved {
    pub host: String,
    pub port: u16,
    pub is_name: bool,
    /// IPv4 addresses if the name has any, else IPv6; empty only when the
    /// lookup was not `required`.
    pub addrs: Vec<SocketAddr>,
}

/// `host:port` → its parts and every address it resolves to (IPv4 when
/// there are any, like the gateway's own resolver); names are looked up
/// with `lookup`, and must resolve when `required`.
pub(crate) fn resolve(addr: &str, lookup: &Lookup, required: bool) -> Result<Resolved, String> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return if a.port() == 0 {
            Err(format!("'{addr}' has port 0; give the backend's real port"))
        } else {
            Ok(Resolved {
                host: a.ip().to_string(),
                port: a.port(),
                is_name: false,
                addrs: vec![a],
            })
        };
    }
    if addr.contains("://") {
        return Err(format!(
            "'{addr}' is a URL; write host:port without a scheme or path"
        ));
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!(
            "'{addr}' has no port; write host:port, e.g. \"10.0.1.10:8080\""
        ));
    };
    if host.is_empty() {
        return Err(format!("'{addr}' has no host; write host:port"));
    }
    if host.contains(':') {
        return Err(format!(
            "'{addr}' is not host:port; write an IPv6 address in brackets, e.g. \"[::1]:8080\""
        ));
    }
    if hickory_resolver::Name::from_ascii(host).is_err() || host.contains(' ') {
        return Err(format!("'{host}' in '{addr}' is not a host name"));
    }
    let port = match port.parse::<u16>() {
        Ok(0) | Err(_) => {
            return Err(format!(
                "'{port}' in '{addr}' is not a valid port (1-65535)"
            ));
        }
        Ok(p) => p,
    };
    let found = lookup(host, port).map_err(|e| format!("cannot resolve '{host}': {e}"))?;
    let v4: Vec<SocketAddr> = found.iter().filter(|a| a.is_ipv4()).copied().collect();
    let mut addrs = if v4.is_empty() { found } else { v4 };
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() && required {
        return Err(format!("'{host}' resolved to no addresses"));
    }
    Ok(Resolved {
        host: host.to_owned(),
        port,
        is_name: true,
        addrs,
    })
}
