//! `[[amqp]]` checks: the broker URL (from the file or the environment),
//! the queue, the default path and how messages are retried.

use toml::Spanned;

use super::{secs, Checker};
use crate::config::model::{AmqpConsumer, Secret};
use crate::config::raw::RawAmqp;
use crate::jobs::record::Policy;

impl Checker<'_> {
    pub(super) fn amqp(&mut self, raw: &[Spanned<RawAmqp>]) -> Vec<AmqpConsumer> {
        let mut out: Vec<AmqpConsumer> = Vec::new();
        for (i, entry) in raw.iter().enumerate() {
            let Some(c) = self.amqp_consumer(i, entry) else {
                continue;
            };
            if out.iter().any(|o| o.name == c.name) {
                self.report(
                    Some(entry.span()),
                    format!("amqp[{i}].name"),
                    format!(
                        "'{}' names another [[amqp]] too; give each a name of its own",
                        c.name
                    ),
                );
                continue;
            }
            out.push(c);
        }
        out
    }

    fn amqp_consumer(&mut self, i: usize, entry: &Spanned<RawAmqp>) -> Option<AmqpConsumer> {
        let raw = entry.get_ref();
        let key = |field: &str| format!("amqp[{i}].{field}");
        let queue = match self.non_empty(&raw.queue, &key("queue")) {
            Some(q) if !q.is_empty() => q,
            Some(_) => return None,
            None => {
                self.report(
                    Some(entry.span()),
                    key("queue"),
                    "missing key `queue`: the queue whose messages are requests",
                );
                return None;
            }
        };
        let name = self
            .non_empty(&raw.name, &key("name"))
            .unwrap_or_else(|| queue.clone());
        let path = match &raw.path {
            None => "/v1/chat/completions".to_owned(),
            Some(p) => {
                if !p.get_ref().starts_with('/') {
                    self.report(
                        Some(p.span()),
                        key("path"),
                        format!("'{}' must start with '/'", p.get_ref()),
                    );
                }
                p.get_ref().clone()
            }
        };
        let url = match (&raw.url, &raw.url_env) {
            (Some(_), Some(env)) => {
                self.report(
                    Some(env.span()),
                    key("url_env"),
                    "give the broker's URL once: `url` or `url_env`, not both",
                );
                return None;
            }
            (Some(url), None) => (url.get_ref().trim().to_owned(), Some(url.span())),
            (None, Some(env)) => {
                let var = env.get_ref().trim();
                match std::env::var(var) {
                    Ok(v) if !v.trim().is_empty() => (v.trim().to_owned(), Some(env.span())),
                    _ => {
                        self.report(
                            Some(env.span()),
                            key("url_env"),
                            format!("environment variable `{var}` is not set (or empty)"),
                        );
                        return None;
                    }
                }
            }
            (None, None) => {
                self.report(
                    Some(entry.span()),
                    key("url"),
                    "missing key `url` (or `url_env`): the broker, \
                     e.g. \"amqp://user:password@rabbitmq:5672/%2f\"",
                );
                return None;
            }
        };
        // The URL may carry a password: a problem names what is wrong, never the URL.
        let broker = match crate::amqp::uri::parse(&url.0) {
            Ok(uri) => crate::amqp::uri::label(&uri),
            Err(why) => {
                let field = if raw.url.is_some() { "url" } else { "url_env" };
                self.report(url.1, key(field), why);
                return None;
            }
        };
        let ca_file = self
            .non_empty(&raw.ca_file, &key("ca_file"))
            .filter(|p| !p.is_empty())
            .map(std::path::PathBuf::from);
        if let (Some(ca), Some(v)) = (&ca_file, &raw.ca_file) {
            if !broker.starts_with("amqps://") {
                self.report(
                    Some(v.span()),
                    key("ca_file"),
                    "only for amqps:// URLs (TLS to the broker)",
                );
            } else if let Err(e) = crate::tls::upstream::load_ca(ca) {
                self.report(Some(v.span()), key("ca_file"), e);
            }
        }
        let dead_letter_exchange = self
            .non_empty(&raw.dead_letter_exchange, &key("dead_letter_exchange"))
            .unwrap_or_else(|| format!("{queue}.dead"));
        let prefetch = self.int(&raw.prefetch, &key("prefetch"), 32, 1, u32::from(u16::MAX));
        Some(AmqpConsumer {
            name,
            url: Secret(url.0),
            broker,
            ca_file,
            queue,
            path,
            declare: raw.declare.as_ref().is_none_or(|d| *d.get_ref()),
            dead_letter_exchange,
            prefetch: u16::try_from(prefetch).unwrap_or(u16::MAX),
            max_reply_bytes: self.size(&raw.max_reply_bytes, &key("max_reply_bytes"), 1 << 20),
            policy: Policy {
                max_attempts: self.int(&raw.max_attempts, &key("max_attempts"), 3, 1, 100),
                backoff: self.duration(&raw.backoff, &key("backoff"), secs(1), true),
                backoff_max: self.duration(&raw.backoff_max, &key("backoff_max"), secs(30), true),
                ttl: secs(0),
                retention: secs(0),
            },
        })
    }
}
