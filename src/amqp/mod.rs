//! RabbitMQ worker mode (`[[amqp]]`): messages on a durable queue are
//! requests; each runs through the same job runner as an async job (routes,
//! retries, fallbacks, only with backend capacity interactive traffic is not
//! using) and its answer is published to the message's `reply_to`. A
//! message is acked only after its reply (and, for a failure, its dead
//! letter) is confirmed by the broker, so a gateway or broker that dies
//! loses nothing: RabbitMQ delivers the message again.
//!
//! The broker's prefetch window follows free backend slots, so messages
//! wait in RabbitMQ, where every replica can take them, not in one
//! gateway's memory.

mod consume;
mod handle;
pub mod message;
pub mod uri;

pub use consume::run;

use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A consumer's connection, as `/readyz` and `/status` show it.
pub struct State {
    pub name: String,
    pub broker: String,
    pub queue: String,
    link: Mutex<Link>,
    /// Messages taken and not yet settled.
    held: Arc<AtomicUsize>,
    window: AtomicU16,
}

#[derive(Clone)]
enum Link {
    Connecting { since: Instant },
    Connected { since: Instant },
    Disconnected { since: Instant, why: String },
}

impl State {
    pub fn new(cfg: &crate::config::AmqpConsumer) -> Arc<State> {
        crate::metrics::register_amqp(&cfg.name);
        Arc::new(State {
            name: cfg.name.clone(),
            broker: cfg.broker.clone(),
            queue: cfg.queue.clone(),
            link: Mutex::new(Link::Connecting {
                since: Instant::now(),
            }),
            held: Arc::new(AtomicUsize::new(0)),
            window: AtomicU16::new(0),
        })
    }

    fn link(&self) -> Link {
        match self.link.lock() {
            Ok(l) => l.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set(&self, link: Link) {
        let connected = matches!(link, Link::Connected { .. });
        let lost = matches!(link, Link::Disconnected { .. });
        match self.link.lock() {
            Ok(mut l) => *l = link,
            Err(p) => *p.into_inner() = link,
        }
        crate::metrics::amqp_connected(&self.name, connected, lost);
    }

    pub fn connected(&self) -> bool {
        matches!(self.link(), Link::Connected { .. })
    }

    /// `None` while connected; else what `/readyz` says about it.
    pub fn problem(&self, now: Instant) -> Option<String> {
        let ago = |since: Instant| now.saturating_duration_since(since).as_secs();
        match self.link() {
            Link::Connected { .. } => None,
            Link::Connecting { since } => Some(format!(
                "amqp '{}': connecting to {} for {}s",
                self.name,
                self.broker,
                ago(since)
            )),
            Link::Disconnected { since, why } => Some(format!(
                "amqp '{}': disconnected from {} for {}s: {why}",
                self.name,
                self.broker,
                ago(since)
            )),
        }
    }

    pub fn json(&self, now: Instant) -> serde_json::Value {
        let (state, since, why) = match self.link() {
            Link::Connecting { since } => ("connecting", since, None),
            Link::Connected { since } => ("connected", since, None),
            Link::Disconnected { since, why } => ("disconnected", since, Some(why)),
        };
        serde_json::json!({
            "name": self.name,
            "broker": self.broker,
            "queue": self.queue,
            "state": state,
            "for_seconds": now.saturating_duration_since(since).as_secs(),
            "error": why,
            "held": self.held.load(Ordering::Relaxed),
            "prefetch": self.window.load(Ordering::Relaxed),
        })
    }
}
