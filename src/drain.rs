//! Graceful shutdown on `SIGTERM`: `/readyz` answers 503 at once (load
//! balancers stop sending), new connections are refused after
//! `server.drain_delay`, requests and streams in flight run to their end
//! for up to `server.grace_period` (the process exits as soon as none is
//! left), and streams still open then end with an error event, never a
//! silent cut. `SIGINT` stops at once. `SIGQUIT` is Pingora's binary
//! upgrade: the listeners go to the new process (`ballast run --upgrade`),
//! and this one finishes what it has in flight the same way, then exits.

use crate::generation::Current;
use async_trait::async_trait;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// After the grace period, how long streams get to write their last event.
const LAST_WORDS: Duration = Duration::from_secs(2);

#[derive(Default)]
pub struct Drain {
    /// `SIGTERM` seen: not ready, no keep-alive.
    draining: AtomicBool,
    /// The drain delay is over: new connections are refused.
    refusing: AtomicBool,
    in_flight: AtomicU64,
    /// Open client connections (idle kept-alive ones included).
    connections: AtomicU64,
    idle: Notify,
    /// The grace period is over: open streams end now.
    cut: watch::Sender<bool>,
    /// Mirrors `refusing`, for idle connections waiting on it.
    closing: watch::Sender<bool>,
}

impl Drain {
    pub fn new() -> Arc<Drain> {
        Arc::new(Drain {
            cut: watch::channel(false).0,
            closing: watch::channel(false).0,
            ..Drain::default()
        })
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn refuses_connections(&self) -> bool {
        self.refusing.load(Ordering::Acquire)
    }

    /// Resolves once new connections are refused: an idle kept-alive
    /// connection is closed then, so that its client reconnects elsewhere
    /// before it sends another request.
    pub async fn closing(&self) {
        let mut closing = self.closing.subscribe();
        if closing.wait_for(|c| *c).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Count a request as in flight while the guard lives.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Count an open client connection while the guard lives.
    pub fn connection(self: &Arc<Self>) -> Connection {
        self.connections.fetch_add(1, Ordering::AcqRel);
        Connection(self.clone())
    }

    /// Wait until no client connection is open at all.
    async fn no_connections(&self) {
        loop {
            let notified = self.idle.notified();
            if self.connections.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// After a binary upgrade handed the listeners over: wait for requests
    /// in flight and for kept-alive connections to carry their last
    /// request (or close), for up to `grace`; then end what is left.
    pub async fn finish_upgrade(&self, grace: Duration) {
        let quiet = async {
            self.idle().await;
            self.no_connections().await;
        };
        if tokio::time::timeout(grace, quiet).await.is_ok() {
            tracing::info!("no connection left: stopping");
            return;
        }
        self.finish(Duration::ZERO).await;
    }

    /// Turns true when open streams must end.
    pub fn cut(&self) -> watch::Receiver<bool> {
        self.cut.subscribe()
    }

    /// Wait until nothing is in flight.
    async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// The shutdown sequence, up to the moment the process may stop.
    async fn run(&self, drain_delay: Duration, grace: Duration) {
        self.draining.store(true, Ordering::Release);
        tracing::info!(
            ?drain_delay,
            ?grace,
            in_flight = self.in_flight(),
            "SIGTERM: draining (/readyz 503)"
        );
        tokio::time::sleep(drain_delay).await;
        self.refusing.store(true, Ordering::Release);
        self.closing.send_replace(true);
        tracing::info!(
            in_flight = self.in_flight(),
            "new connections refused; waiting for requests in flight"
        );
        self.finish(grace).await;
    }

    /// Wait for what is in flight, for up to `grace`; then end the streams
    /// still open (with their error event) and give them a moment.
    pub async fn finish(&self, grace: Duration) {
        if tokio::time::timeout(grace, self.idle()).await.is_ok() {
            tracing::info!("nothing left in flight: stopping");
            return;
        }
        tracing::warn!(
            in_flight = self.in_flight(),
            "grace period over: ending open streams"
        );
        self.cut.send_replace(true);
        let _ = tokio::time::timeout(LAST_WORDS, self.idle()).await;
    }
}

/// Pingora's grace period, for a binary upgrade only: past the drain's own
/// (the drain ends the process first, once idle or after its last words).
pub fn upgrade_grace(grace: Duration) -> u64 {
    (grace + LAST_WORDS).as_secs() + 2
}

/// One open client connection.
pub struct Connection(Arc<Drain>);

impl Drop for Connection {
    fn drop(&mut self) {
        if self.0.connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// One request in flight.
pub struct InFlight(Arc<Drain>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Pingora's shutdown signal, with the drain in front of a graceful stop.
pub struct Signals {
    pub drain: Arc<Drain>,
    /// The generation in force when the signal comes says how long to wait.
    pub current: Current,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot listen for shutdown signals; stopping");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = int.recv() => return ShutdownSignal::FastShutdown,
            _ = quit.recv() => return ShutdownSignal::GracefulUpgrade,
            _ = term.recv() => {}
        }
        let server = self.current.load().config.server.clone();
        tokio::select! {
            _ = self.drain.run(server.drain_delay, server.grace_period) => {
                // Everything is done: Pingora would only wait longer.
                std::process::exit(0)
            }
            // A second signal: stop now.
            _ = int.recv() => ShutdownSignal::FastShutdown,
            _ = term.recv() => ShutdownSignal::FastShutdown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn it_stops_as_soon_as_nothing_is_in_flight() {
        let drain = Drain::new();
        let request = drain.begin();
        let run = tokio::spawn({
            let drain = drain.clone();
            async move {
                drain
                    .run(Duration::from_secs(1), Duration::from_secs(30))
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(drain.is_draining() && !drain.refuses_connections());
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(drain.refuses_connections());
        drop(request);
        run.await.unwrap();
        assert!(!*drain.cut().borrow());
    }

    #[tokio::test(start_paused = true)]
    async fn streams_still_open_at_the_deadline_are_cut() {
        let drain = Drain::new();
        let stream = drain.begin();
        let mut cut = drain.cut();
        let run = tokio::spawn({
            let drain = drain.clone();
            async move { drain.run(Duration::ZERO, Duration::from_secs(5)).await }
        });
        cut.wait_for(|c| *c).await.unwrap();
        drop(stream);
        run.await.unwrap();
    }
}
