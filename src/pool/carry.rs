//! A pool across a reload: the pool of the same name in the new config
//! takes over the old one's queue (with its waiters) and every member
//! whose configured `addr` stays, state and all; the others drain.

use super::members::{self, NewEntry};
use super::{MemberChange, Pool, Server};
use crate::config::PoolConfig;
use crate::metrics;
use crate::tls::UpstreamTls;
use http::HeaderValue;
use std::net::SocketAddr;
use std::sync::Arc;

impl Pool {
    /// The pool `cfg` describes, carrying over from `previous` (the pool of
    /// the same name in the generation before).
    pub fn next(
        cfg: &PoolConfig,
        credential: Option<HeaderValue>,
        tls: Option<Arc<UpstreamTls>>,
        previous: &Pool,
    ) -> (Pool, MemberChange) {
        previous.admission.reconfigure(&cfg.queue);
        let current = previous.servers();
        let names: Vec<(&str, SocketAddr)> = current
            .iter()
            .map(|s| (s.name.as_str(), s.socket))
            .collect();
        let entries: Vec<NewEntry<'_>> = cfg
            .servers
            .iter()
            .map(|s| NewEntry {
                addr: &s.addr,
                resolved: &s.resolved,
            })
            .collect();
        let plan = members::carry(&names, &entries);
        let mut change = MemberChange::default();
        let mut next: Vec<Arc<Server>> = Vec::with_capacity(plan.keep.len() + plan.add.len());
        for (i, entry) in plan.keep {
            let s = current[i].clone();
            s.reconfigure(cfg, &cfg.servers[entry], entry, tls.as_deref());
            next.push(s);
        }
        for (entry, socket) in plan.add {
            let s = Arc::new(Server::new(
                cfg,
                &cfg.servers[entry],
                entry,
                socket,
                previous.admission.clone(),
                tls.as_deref(),
                true,
            ));
            metrics::register_server(&cfg.name, &s.addr);
            change.added.push(s.addr.clone());
            next.push(s);
        }
        let mut draining = previous.draining().clone();
        for i in plan.drain {
            let s = &current[i];
            s.drain();
            change.drained.push(s.addr.clone());
            draining.push(s.clone());
        }
        let admission = previous.admission.clone();
        let pool = Pool::assemble(
            cfg,
            credential,
            tls,
            admission,
            next,
            draining,
            Some(previous),
        );
        (pool, change)
    }

    /// A pool the new config no longer has: every member drains, and the
    /// sweep removes them (and their series) as their requests end.
    pub fn retire(&self) {
        let members = self.servers();
        let mut draining = self.draining();
        for s in members.iter() {
            s.drain();
            draining.push(s.clone());
        }
        self.members.store(Arc::new(Vec::new()));
    }

    /// Nothing left in flight: a retired pool can be forgotten.
    pub fn is_idle(&self) -> bool {
        self.servers().is_empty() && self.draining().is_empty()
    }
}
