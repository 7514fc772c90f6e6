//! A lease on one server: it counts as outstanding from the moment the
//! server is picked until the lease is dropped, however the request ends
//! (success, error, client disconnect, cancelled future).

use super::Server;
use crate::outcome::Outcome;
use std::sync::Arc;
use std::time::Instant;

pub struct Lease {
    server: Arc<Server>,
    probe: bool,
    recorded: bool,
}

impl Lease {
    pub(super) fn new(server: Arc<Server>, probe: bool) -> Self {
        Lease {
            server,
            probe,
            recorded: false,
        }
    }

    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// The server's id (for "already tried" bookkeeping).
    pub fn id(&self) -> u64 {
        self.server.id
    }

    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Report how the attempt went; only the first report counts. A local
    /// failure (the gateway out of descriptors) says nothing about the
    /// server and is not recorded.
    pub fn record(&mut self, outcome: Outcome, now: Instant) {
        if self.recorded || outcome == Outcome::Local {
            return;
        }
        self.recorded = true;
        self.server.record(outcome.is_server_failure(), now);
    }

    /// Report a failure that came after a success was reported: a
    /// response broken off after its head (a cut stream).
    pub fn record_late(&mut self, outcome: Outcome, now: Instant) {
        if outcome == Outcome::Local || !outcome.is_server_failure() {
            return;
        }
        self.recorded = true;
        self.server.record(true, now);
    }
}

impl Lease {
    /// If requests are queued for this pool, give this slot to the first of
    /// them rather than freeing it. True when the slot was passed on (or is
    /// owned by a new lease that will free it).
    fn pass_on(&self) -> bool {
        let admission = &self.server.admission;
        if self.probe
            || !admission.has_waiters()
            || !self.server.availability(Instant::now()).is_usable()
        {
            return false;
        }
        let next = Lease::new(self.server.clone(), false);
        // Nobody took it after all: dropping it frees the slot (or passes
        // it on to someone who joined meanwhile).
        drop(admission.hand_off(next));
        true
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.pass_on() {
            self.server.release(self.probe && !self.recorded);
        }
    }
}
