//! How many request bytes the gateway holds at once, across all
//! connections (`limits.max_buffered_bytes`). Every request body is
//! buffered whole so that any attempt can replay it; without a shared
//! bound, many clients each sending a body just under `max_request_body`
//! could take all the memory there is. A request that would pass the
//! bound is refused with 503 instead.

use crate::metrics;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub struct BufferBudget {
    limit: u64,
    used: AtomicU64,
}

impl BufferBudget {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(BufferBudget {
            limit,
            used: AtomicU64::new(0),
        })
    }

    /// An empty claim, grown as bytes arrive.
    pub fn claim(self: &Arc<Self>) -> Claim {
        Claim {
            budget: self.clone(),
            bytes: 0,
        }
    }

    #[cfg(test)]
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
}

/// Bytes one request holds; released when dropped.
pub struct Claim {
    budget: Arc<BufferBudget>,
    bytes: u64,
}

impl Claim {
    /// Hold `n` more bytes; `false` (and nothing held) if that would pass
    /// the limit.
    pub fn grow(&mut self, n: u64) -> bool {
        let limit = self.budget.limit;
        let grown = self
            .budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= limit)
            });
        if grown.is_ok() {
            self.bytes += n;
            metrics::buffered_bytes(n as i64);
        }
        grown.is_ok()
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
        metrics::buffered_bytes(-(self.bytes as i64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_share_one_limit_and_give_back_on_drop() {
        let budget = BufferBudget::new(100);
        let mut a = budget.claim();
        let mut b = budget.claim();
        assert!(a.grow(60));
        assert!(!b.grow(41), "past the limit");
        assert!(b.grow(40));
        assert_eq!(budget.used(), 100);
        assert!(!a.grow(1));
        drop(a);
        assert_eq!(budget.used(), 40);
        assert!(b.grow(60));
        drop(b);
        assert_eq!(budget.used(), 0);
        assert!(!budget.claim().grow(u64::MAX), "no overflow");
    }
}
