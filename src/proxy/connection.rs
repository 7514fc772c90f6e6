//! One client connection from accept to close. Every state has a deadline
//! and every buffer a bound: connections beyond `limits.max_connections`
//! are refused at once with a 503; the HTTP/2 preface or an HTTP/1 head
//! must arrive within `header_timeout` of accept; a kept-alive connection
//! may idle for `keepalive_idle`, then has `header_timeout` for the next
//! head; an HTTP/2 connection with nothing in flight is closed after
//! `keepalive_idle`. Heads are read and checked by `head` before Pingora
//! parses them, so a malformed one is answered with its status. On TLS
//! listeners the handshake comes first (within `header_timeout` too), and
//! a plain HTTP request is answered `400 tls_required`.

use super::head::{self, Head, HeadLimits};
use super::rewound::{Rewound, Transport};
use super::{respond, Gateway};
use crate::error::GatewayError;
use crate::metrics;
use crate::tls::ListenerTls;
use async_trait::async_trait;
use pingora_core::apps::{HttpPersistentSettings, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as TcpStream;
use pingora_core::protocols::{Peek, Stream};
use pingora_core::server::ShutdownWatch;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Room for the request line's method, version and line ends on top of
/// `max_header_bytes`, which counts the target and the header lines.
const REQUEST_LINE_SLACK: usize = 64;

/// How long a refused connection is drained before it is closed: short
/// when refusing for lack of room, longer for a client that sent a bad head.
const OVERLOADED_LINGER: Duration = Duration::from_millis(200);
const REFUSED_LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// The first byte of a TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The gateway's listening side: Pingora hands every accepted connection here.
pub struct Connections {
    gateway: Arc<Gateway>,
    open: AtomicU32,
    /// Set: every listener speaks TLS (HTTP/1.1 or HTTP/2 by ALPN).
    tls: Option<ListenerTls>,
}

impl Connections {
    pub fn new(gateway: Arc<Gateway>, tls: Option<ListenerTls>) -> Self {
        Connections {
            gateway,
            open: AtomicU32::new(0),
            tls,
        }
    }

    /// A place among the open connections, or `None` when all are taken.
    fn admit(&self) -> Option<OpenConnection<'_>> {
        let max = self.gateway.current.load().config.limits.max_connections;
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        match taken {
            Ok(_) => {
                metrics::client_connections(1);
                Some(OpenConnection {
                    open: &self.open,
                    _drain: self.gateway.drain.connection(),
                })
            }
            Err(_) => None,
        }
    }

    async fn serve(&self, stream: Stream, shutdown: &ShutdownWatch) {
        let accepted = Instant::now();
        let Some(mut tcp) = TcpStream::from_stream(stream) else {
            // Not a plain TCP stream (nothing else is listened on).
            tracing::warn!("connection of an unexpected kind closed");
            return;
        };
        let gen = self.gateway.current.load_full();
        let limits = &gen.config.limits;
        let Some(tls) = &self.tls else {
            let h2c = self.gateway.server_options.h2c;
            return self.serve_http(tcp, accepted, h2c, shutdown).await;
        };
        // The handshake counts against header_timeout, like the head after it.
        let deadline = accepted + limits.header_timeout;
        let mut first = [0u8; 1];
        match tokio::time::timeout_at(deadline, tcp.try_peek(&mut first)).await {
            Ok(Ok(true)) if first[0] == TLS_HANDSHAKE_RECORD => {}
            Ok(Ok(true)) if first[0].is_ascii_alphabetic() => {
                metrics::connection_refused("plain_http_on_tls");
                refuse(tcp, &GatewayError::tls_required(), Instant::now()).await;
                return;
            }
            _ => return,
        }
        // Pinned here so that a handshake cut by the deadline is counted
        // before its socket is dropped (a client that sees the close and
        // asks for the metric must find it). Boxed, as is the TLS branch's
        // `serve_http`: the connection's future stays the size that a
        // plaintext connection needs.
        let mut handshake = Box::pin(tls.acceptor.tls_handshake(*tcp));
        let stream = match tokio::time::timeout_at(deadline, &mut handshake).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(error = %crate::redact::Redacted(&e), "client TLS handshake failed");
                metrics::connection_refused("tls_handshake");
                return;
            }
            Err(_) => {
                metrics::connection_refused("tls_handshake");
                return;
            }
        };
        let h2 = matches!(
            pingora_core::protocols::Ssl::selected_alpn_proto(&stream),
            Some(pingora_core::protocols::ALPN::H2)
        );
        let stream = Box::new(Rewound::new(stream));
        Box::pin(self.serve_http(stream, accepted, h2, shutdown)).await
    }

    /// HTTP on an established transport: heads checked here, then handed
    /// to Pingora; `h2` looks for the HTTP/2 preface first (h2c on plain
    /// listeners, ALPN `h2` on TLS ones).
    async fn serve_http<T: Transport>(
        &self,
        mut io: Box<T>,
        accepted: Instant,
        h2: bool,
        shutdown: &ShutdownWatch,
    ) {
        let gen = self.gateway.current.load_full();
        let limits = &gen.config.limits;
        let mut head_limits = HeadLimits {
            first_byte_by: accepted + limits.header_timeout,
            header_timeout: limits.header_timeout,
            fresh: true,
            max_bytes: limits.max_header_bytes as usize + REQUEST_LINE_SLACK,
            h2c: h2,
        };
        let mut persistent: Option<HttpPersistentSettings> = None;
        loop {
            // Between requests, a shutdown closes the connection (the
            // client reconnects elsewhere) rather than wait for a request
            // it would then have to refuse. Only a SIGTERM's drain closes
            // idle connections: its load balancer has stopped sending. In a
            // binary upgrade clients keep coming: the next request is
            // served (with `Connection: close`), rather than racing a close
            // against a request already on its way.
            let fresh = head_limits.fresh;
            let drain = &self.gateway.drain;
            let stop = async move {
                if fresh {
                    std::future::pending::<()>().await;
                }
                drain.closing().await;
            };
            match head::read(&mut *io, &head_limits, stop).await {
                Head::Idle => return,
                Head::Refuse(err, began) => {
                    refuse(io, &err, began).await;
                    return;
                }
                Head::Http2(read) => {
                    io.unread(&read);
                    // Pingora's own HTTP/2 service: handshake, streams, and
                    // `h2_idle_timeout`; every stream comes back to
                    // `Gateway::process_new_http`.
                    ServerApp::process_new(&self.gateway, io, shutdown).await;
                    return;
                }
                Head::Http1(read) => {
                    io.unread(&read);
                    // Not kept while the request is served: its capacity
                    // is a whole read (8 KiB), for every open connection.
                    drop(read);
                    // Boxed: it is handed down by value through every layer of
                    // the request's future, which would otherwise hold it at
                    // each.
                    let mut session = Box::new(ServerSession::new_http1(io));
                    match persistent.take() {
                        Some(settings) => settings.apply_to_session(&mut session),
                        None => session.set_keepalive(Some(limits.keepalive_idle.as_secs())),
                    }
                    if *shutdown.borrow() {
                        session.set_keepalive(None);
                    }
                    let reused = self.gateway.serve_http1(session, shutdown).await;
                    let Some(reused) = reused else { return };
                    let (stream, settings) = reused.consume();
                    persistent = settings;
                    let Some(next) = T::from_stream(stream) else {
                        return;
                    };
                    io = next;
                    head_limits.fresh = false;
                    head_limits.h2c = false;
                    head_limits.first_byte_by = Instant::now() + limits.keepalive_idle;
                }
            }
        }
    }
}

#[async_trait]
impl ServerApp for Connections {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if self.gateway.drain.refuses_connections() {
            // Shutting down: the client's next try goes to another instance.
            metrics::connection_refused("shutting_down");
            return None;
        }
        let Some(_open) = self.admit() else {
            metrics::connection_refused("max_connections");
            let err = GatewayError::overloaded();
            if respond::raw_error(&mut stream, &err).await.is_ok() {
                linger(&mut stream, OVERLOADED_LINGER).await;
            }
            return None;
        };
        self.serve(stream, shutdown).await;
        None
    }

    async fn cleanup(&self) {}
}

/// Counts one open client connection while it lives.
struct OpenConnection<'a> {
    open: &'a AtomicU32,
    /// Counted by the drain too: an upgrade waits for every connection.
    _drain: crate::drain::Connection,
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        metrics::client_connections(-1);
    }
}

/// Answer a head that cannot be served, count it, and close.
async fn refuse<T: Transport>(mut io: Box<T>, err: &GatewayError, started: Instant) {
    tracing::debug!(status = err.status, code = err.code, "request head refused");
    let elapsed = started.elapsed().as_secs_f64();
    metrics::request_done("none", err.status, elapsed, false, Some(elapsed));
    if respond::raw_error(&mut *io, err).await.is_ok() {
        linger(&mut *io, REFUSED_LINGER).await;
    }
}

/// After answering and closing our side, read (and drop) what the client
/// still sends for a moment: closing with unread bytes would reset the
/// connection, and the client might lose the answer. Bounded in time and
/// bytes.
async fn linger<R: tokio::io::AsyncRead + Unpin + ?Sized>(io: &mut R, limit: Duration) {
    use tokio::io::AsyncReadExt;
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(limit, drain).await;
}
