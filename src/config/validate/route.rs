//! `[[route]]` checks: names, prefixes, pool references, retry, timeouts.

use std::collections::HashMap;

use toml::Spanned;

use super::{secs, span_of, Checker};
use crate::config::model::{
    Fallback, FallbackOn, Priority, ResumeConfig, RetryConfig, RetryOn, RouteConfig, Timeouts,
};
use crate::config::raw::{
    Opt, RawPool, RawResume, RawRetry, RawRoute, RawRouteJobs, RawTimeouts, StrOrInt,
};
use crate::jobs::record::Policy;
use crate::openai::continuation::Dialect;

const RETRY_ON_HELP: &str = "connect_error, timeout, reset, 429, 500, 502, 503, 504";

const DEFAULT_RETRY_ON: [RetryOn; 5] = [
    RetryOn::ConnectError,
    RetryOn::Status(429),
    RetryOn::Status(502),
    RetryOn::Status(503),
    RetryOn::Status(504),
];

/// Pool names in file order, for resolving `route.pool` and `fallback.pool`.
/// With each pool's continuation dialect (for `[route.resume]`).
struct PoolNames(Vec<String>, Vec<Dialect>);

impl PoolNames {
    fn index(&self, name: &str) -> Option<usize> {
        self.0.iter().position(|n| n == name)
    }

    fn known(&self) -> String {
        let names: Vec<String> = self
            .0
            .iter()
            .filter(|n| !n.is_empty())
            .map(|n| format!("'{n}'"))
            .collect();
        if names.is_empty() {
            "no pools are defined".to_owned()
        } else {
            format!("known pools: {}", names.join(", "))
        }
    }
}

impl Checker<'_> {
    pub(super) fn routes(
        &mut self,
        raw: &[Spanned<RawRoute>],
        pools: &[Spanned<RawPool>],
        dialects: Vec<Dialect>,
    ) -> Vec<RouteConfig> {
        let names = PoolNames(
            pools
                .iter()
                .map(|p| {
                    p.get_ref()
                        .name
                        .as_ref()
                        .map(|n| n.get_ref().trim().to_owned())
                        .unwrap_or_default()
                })
                .collect(),
            dialects,
        );
        let mut seen_names: HashMap<String, usize> = HashMap::new();
        // path_prefix of routes without a model list → name of the first such route
        let mut catch_all: HashMap<String, String> = HashMap::new();
        let mut routes = Vec::new();
        for (i, spanned) in raw.iter().enumerate() {
            let route = self.route(i, spanned, &names);
            let raw = spanned.get_ref();
            if !route.name.is_empty() {
                if let Some(line) = seen_names.get(&route.name) {
                    self.report(
                        span_of(&raw.name),
                        format!("route[{i}].name"),
                        format!(
                            "duplicate route name '{}' (first defined on line {line})",
                            route.name
                        ),
                    );
                } else if let Some(name) = &raw.name {
                    let (line, _) = self.lines.line_col(name.span().start);
                    seen_names.insert(route.name.clone(), line);
                }
            }
            if route.models.is_empty() {
                if let Some(first) = catch_all.get(&route.path_prefix) {
                    self.report(
                        span_of(&raw.path_prefix).or(Some(spanned.span())),
                        format!("route[{i}].path_prefix"),
                        format!(
                            "route '{}' has the same path_prefix '{}' as route '{first}' \
                             and neither lists models, so it could never match",
                            route.name, route.path_prefix
                        ),
                    );
                } else {
                    catch_all.insert(route.path_prefix.clone(), route.name.clone());
                }
            }
            routes.push(route);
        }
        routes
    }

    fn route(&mut self, i: usize, spanned: &Spanned<RawRoute>, pools: &PoolNames) -> RouteConfig {
        let raw = spanned.get_ref();
        let key = |field: &str| format!("route[{i}].{field}");
        let name = match &raw.name {
            None => {
                self.report(
                    Some(spanned.span()),
                    key("name"),
                    "missing key `name`; every route needs a unique name",
                );
                String::new()
            }
            Some(n) => {
                let name = n.get_ref().trim().to_owned();
                if name.is_empty() {
                    self.report(Some(n.span()), key("name"), "route name must not be empty");
                }
                name
            }
        };
        let path_prefix = match &raw.path_prefix {
            None => "/".to_owned(),
            Some(p) => {
                let prefix = p.get_ref().trim();
                if !prefix.starts_with('/') {
                    self.report(
                        Some(p.span()),
                        key("path_prefix"),
                        format!("path_prefix '{prefix}' must start with '/'"),
                    );
                }
                prefix.to_owned()
            }
        };
        let mut models = Vec::new();
        for (j, model) in raw.models.iter().flatten().enumerate() {
            let text = model.get_ref().trim();
            if text.is_empty() {
                self.report(
                    Some(model.span()),
                    format!("route[{i}].models[{j}]"),
                    "must not be empty",
                );
            }
            models.push(text.to_owned());
        }
        let pool = match &raw.pool {
            None => {
                self.report(
                    Some(spanned.span()),
                    key("pool"),
                    format!(
                        "missing key `pool` (the pool this route sends to); {}",
                        pools.known()
                    ),
                );
                0
            }
            Some(p) => self.pool_ref(p, &key("pool"), pools),
        };
        let mut fallback = Vec::new();
        for (j, f) in raw.fallback.iter().flatten().enumerate() {
            let fkey = |field: &str| format!("route[{i}].fallback[{j}].{field}");
            let pool = match &f.get_ref().pool {
                None => {
                    self.report(
                        Some(f.span()),
                        fkey("pool"),
                        format!("missing key `pool`; {}", pools.known()),
                    );
                    0
                }
                Some(p) => self.pool_ref(p, &fkey("pool"), pools),
            };
            let model = self.non_empty(&f.get_ref().model, &fkey("model"));
            let on = self.fallback_on(f.get_ref().on.as_deref(), &fkey("on"));
            fallback.push(Fallback { pool, model, on });
        }
        let max_tokens_limit = raw.max_tokens_limit.as_ref().and_then(|n| {
            if *n.get_ref() >= 1 {
                u64::try_from(*n.get_ref()).ok()
            } else {
                self.report(
                    Some(n.span()),
                    key("max_tokens_limit"),
                    "must be at least 1",
                );
                None
            }
        });
        let priority = match &raw.priority {
            None => Priority::Normal,
            Some(p) => Priority::parse(p.get_ref()).unwrap_or_else(|| {
                self.report(
                    Some(p.span()),
                    key("priority"),
                    format!(
                        "unknown priority '{}'; expected high, normal or low",
                        p.get_ref()
                    ),
                );
                Priority::Normal
            }),
        };
        let priority_header = raw.priority_header.as_ref().and_then(|h| {
            match http::HeaderName::from_bytes(h.get_ref().trim().as_bytes()) {
                Ok(name) => Some(name),
                Err(_) => {
                    self.report(
                        Some(h.span()),
                        key("priority_header"),
                        format!("'{}' is not a valid header name", h.get_ref()),
                    );
                    None
                }
            }
        });
        let upgrades = self.upgrades(i, raw.upgrades.as_deref());
        let openai = raw.openai.as_ref().is_some_and(|o| *o.get_ref());
        let chain: Vec<usize> = std::iter::once(pool)
            .chain(fallback.iter().map(|f| f.pool))
            .collect();
        let resume = self.resume(i, raw.resume.as_ref(), openai, &chain, pools);
        let jobs = raw.jobs.as_ref().and_then(|j| self.route_jobs(i, j));
        RouteConfig {
            name,
            path_prefix,
            models,
            pool,
            fallback,
            openai,
            resume,
            jobs,
            max_tokens_limit,
            stream_include_usage: raw
                .stream_include_usage
                .as_ref()
                .is_some_and(|b| *b.get_ref()),
            priority,
            priority_header,
            upgrades,
            require_key: raw.require_key.as_ref().is_some_and(|b| *b.get_ref()),
            retry: self.retry(i, raw.retry.as_ref()),
            timeouts: self.timeouts(i, raw.timeouts.as_ref()),
        }
    }

    /// `route.upgrades`: protocol names (`websocket`); default `["websocket"]`.
    fn upgrades(&mut self, i: usize, raw: Option<&[Spanned<String>]>) -> Vec<String> {
        let Some(list) = raw else {
            return vec!["websocket".to_owned()];
        };
        let mut upgrades = Vec::new();
        for (j, entry) in list.iter().enumerate() {
            let name = entry.get_ref().trim().to_ascii_lowercase();
            let key = format!("route[{i}].upgrades[{j}]");
            let is_token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._/".contains(&b));
            if !is_token {
                self.report(
                    Some(entry.span()),
                    key,
                    format!("'{name}' is not a protocol name, e.g. \"websocket\""),
                );
            } else if name == "h2c" || name.starts_with("http/") {
                // Spliced, an upgrade to HTTP would carry requests past every
                // route and check (h2c smuggling).
                self.report(
                    Some(entry.span()),
                    key,
                    format!("'{name}' cannot be tunnelled; clients reach h2c with prior knowledge"),
                );
            } else if !upgrades.contains(&name) {
                upgrades.push(name);
            }
        }
        upgrades
    }

    fn pool_ref(&mut self, name: &Spanned<String>, key: &str, pools: &PoolNames) -> usize {
        let text = name.get_ref().trim();
        match pools.index(text) {
            Some(index) if !text.is_empty() => index,
            _ => {
                self.report(
                    Some(name.span()),
                    key,
                    format!("unknown pool '{text}'; {}", pools.known()),
                );
                0
            }
        }
    }

    /// `fallback.on`: `unavailable` (the default) and/or `context_length`.
    fn fallback_on(&mut self, raw: Option<&[Spanned<String>]>, key: &str) -> FallbackOn {
        let Some(list) = raw else {
            return FallbackOn::default();
        };
        let mut on = FallbackOn {
            unavailable: false,
            context_length: false,
        };
        for entry in list {
            match entry.get_ref().trim() {
                "unavailable" => on.unavailable = true,
                "context_length" => on.context_length = true,
                other => self.report(
                    Some(entry.span()),
                    key,
                    format!("'{other}' is not \"unavailable\" or \"context_length\""),
                ),
            }
        }
        if list.is_empty() {
            self.report(
                None,
                key,
                "must name at least one reason: \"unavailable\" or \"context_length\"",
            );
        }
        on
    }

    /// `[route.jobs]`: how the route's jobs are run and kept.
    fn route_jobs(&mut self, i: usize, raw: &RawRouteJobs) -> Option<Policy> {
        let key = |field: &str| format!("route[{i}].jobs.{field}");
        let policy = Policy {
            max_attempts: self.int(&raw.max_attempts, &key("max_attempts"), 5, 1, 100),
            backoff: self.duration(&raw.backoff, &key("backoff"), secs(2), true),
            backoff_max: self.duration(&raw.backoff_max, &key("backoff_max"), secs(300), true),
            ttl: self.duration(&raw.ttl, &key("ttl"), secs(3600), true),
            retention: self.duration(&raw.retention, &key("retention"), secs(86_400), true),
        };
        raw.enabled
            .as_ref()
            .is_some_and(|e| *e.get_ref())
            .then_some(policy)
    }

    /// `[route.resume]`: on OpenAI routes whose pools can continue a stream.
    fn resume(
        &mut self,
        i: usize,
        raw: Option<&RawResume>,
        openai: bool,
        pools: &[usize],
        names: &PoolNames,
    ) -> Option<ResumeConfig> {
        let raw = raw?;
        let key = |field: &str| format!("route[{i}].resume.{field}");
        let max_resumes = self.int(&raw.max_resumes, &key("max_resumes"), 1, 1, 100);
        if !raw.enabled.as_ref().is_some_and(|e| *e.get_ref()) {
            return None;
        }
        let span = raw.enabled.as_ref().map(|e| e.span());
        if !openai {
            self.report(
                span,
                key("enabled"),
                "resuming streams needs openai = true on the route (the stream must be read)",
            );
            return None;
        }
        if !pools
            .iter()
            .any(|&p| names.1.get(p).is_some_and(|d| *d != Dialect::None))
        {
            self.report(
                span,
                key("enabled"),
                "no pool of this route (or its fallbacks) sets `continuation`, so nothing could resume a stream",
            );
            return None;
        }
        Some(ResumeConfig { max_resumes })
    }

    fn retry(&mut self, i: usize, raw: Option<&RawRetry>) -> RetryConfig {
        let default = RawRetry::default();
        let raw = raw.unwrap_or(&default);
        let key = |field: &str| format!("route[{i}].retry.{field}");
        let attempts = self.int(&raw.attempts, &key("attempts"), 3, 1, u32::MAX);
        let on = match &raw.on {
            None => DEFAULT_RETRY_ON.to_vec(),
            Some(list) => {
                let mut on = Vec::new();
                for (j, entry) in list.iter().enumerate() {
                    match retry_on(entry.get_ref()) {
                        Ok(r) if !on.contains(&r) => on.push(r),
                        Ok(_) => {}
                        Err(shown) => self.report(
                            Some(entry.span()),
                            format!("route[{i}].retry.on[{j}]"),
                            format!(
                                "unknown retry condition {shown}; expected one of {RETRY_ON_HELP}"
                            ),
                        ),
                    }
                }
                on
            }
        };
        let backoff_base = self.duration(&raw.backoff_base, &key("backoff_base"), secs(1), false);
        let backoff_max = self.duration(&raw.backoff_max, &key("backoff_max"), secs(30), false);
        if backoff_base > backoff_max {
            let (span, field) = match &raw.backoff_base {
                Some(b) => (Some(b.span()), "backoff_base"),
                None => (span_of(&raw.backoff_max), "backoff_max"),
            };
            self.report(
                span,
                key(field),
                format!(
                    "backoff_base ({}) must not exceed backoff_max ({})",
                    humantime::format_duration(backoff_base),
                    humantime::format_duration(backoff_max)
                ),
            );
        }
        let jitter = self.fraction(&raw.jitter, &key("jitter"), 0.1, Some(1.0));
        let budget = self.fraction(&raw.budget, &key("budget"), 0.2, None);
        RetryConfig {
            attempts,
            on,
            backoff_base,
            backoff_max,
            jitter,
            budget,
        }
    }

    /// A finite number ≥ 0 and, with `max`, ≤ `max`.
    pub(super) fn fraction(
        &mut self,
        value: &Opt<f64>,
        key: &str,
        default: f64,
        max: Option<f64>,
    ) -> f64 {
        let Some(value) = value else { return default };
        let n = *value.get_ref();
        let ok = n.is_finite() && n >= 0.0 && max.is_none_or(|m| n <= m);
        if ok {
            return n;
        }
        let message = match max {
            Some(m) => format!("must be between 0 and {m} (got {n})"),
            None => format!("must be a finite number ≥ 0 (got {n})"),
        };
        self.report(Some(value.span()), key, message);
        default
    }

    fn timeouts(&mut self, i: usize, raw: Option<&RawTimeouts>) -> Timeouts {
        let default = RawTimeouts::default();
        let raw = raw.unwrap_or(&default);
        let key = |field: &str| format!("route[{i}].timeouts.{field}");
        Timeouts {
            connect: self.duration(&raw.connect, &key("connect"), secs(2), true),
            first_byte: self.duration(&raw.first_byte, &key("first_byte"), secs(30), true),
            stream_idle: self.duration(&raw.stream_idle, &key("stream_idle"), secs(60), true),
            total: self.duration(&raw.total, &key("total"), secs(600), true),
            websocket_idle: self.duration(
                &raw.websocket_idle,
                &key("websocket_idle"),
                secs(24 * 3600),
                true,
            ),
            client_write: self.duration(&raw.client_write, &key("client_write"), secs(60), true),
        }
    }
}

/// A `retry.on` entry; the error is the entry as the user wrote it.
fn retry_on(entry: &StrOrInt) -> Result<RetryOn, String> {
    let status = |n: i64| match n {
        429 | 500 | 502 | 503 | 504 => Ok(RetryOn::Status(n as u16)),
        _ => Err(n.to_string()),
    };
    match entry {
        StrOrInt::Int(n) => status(*n),
        StrOrInt::Str(s) => match s.trim() {
            "connect_error" => Ok(RetryOn::ConnectError),
            "timeout" => Ok(RetryOn::Timeout),
            "reset" => Ok(RetryOn::Reset),
            other => match other.parse::<i64>() {
                Ok(n) => status(n).map_err(|_| format!("'{other}'")),
                Err(_) => Err(format!("'{other}'")),
            },
        },
    }
}
