//! One generation of the running configuration: the config it came from,
//! its route table, the retry budget of each route and its pools. Requests
//! take the current generation when they start and keep it to their end;
//! a reload builds the next generation and swaps it in whole.

use crate::config::Config;
use crate::pool::Pool;
use crate::retry::RetryBudget;
use crate::route::RouteTable;
use arc_swap::ArcSwap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

pub struct Generation {
    /// 1 for the config the process started with, then one more per reload.
    pub number: u64,
    pub config: Arc<Config>,
    pub routes: RouteTable,
    /// Per route, in config order.
    budgets: Vec<Arc<Mutex<RetryBudget>>>,
    pub pools: Vec<Arc<Pool>>,
}

/// The generation in force, shared by every part that serves.
pub type Current = Arc<ArcSwap<Generation>>;

impl Generation {
    /// The first generation, from the config the process started with.
    pub fn first(config: Arc<Config>, pools: Vec<Arc<Pool>>) -> Generation {
        let now = Instant::now();
        Generation {
            number: 1,
            routes: RouteTable::new(&config.routes),
            budgets: config
                .routes
                .iter()
                .map(|r| Arc::new(Mutex::new(RetryBudget::new(r.retry.budget, now))))
                .collect(),
            config,
            pools,
        }
    }

    pub fn into_current(self) -> Current {
        Arc::new(ArcSwap::from_pointee(self))
    }

    /// The retry budget of route `route_idx`.
    pub fn budget(&self, route_idx: usize) -> MutexGuard<'_, RetryBudget> {
        self.budgets[route_idx]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
