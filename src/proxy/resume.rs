//! Resuming a cut stream: when the backend of an OpenAI chat stream fails
//! or goes silent after the client has had part of the answer, the same
//! attempt loop (selection, retries, fallbacks, queueing) finds another
//! server and asks it to continue from the text already sent; its events
//! are spliced into the client's stream as if nothing had happened. A
//! continuation that is refused or cannot be had leaves the client with
//! the interruption error event about the original failure, never the
//! continuation's own answer.

use super::access_log::AccessLog;
use super::attempt::Answer;
use super::attempt_loop::{record_cut, Obtained, Request, Shape};
use super::respond::{self, Forwarded, Forwarder, Forwarding};
use super::Gateway;
use crate::generation::Generation;
use crate::metrics;
use crate::pool::{Lease, Pool, Server};
use pingora_core::protocols::http::ServerSession;
use std::sync::Arc;
use std::time::Instant;

impl Gateway {
    /// Forward an event stream to the client, resuming it elsewhere each
    /// time it is cut (up to the request's `max_resumes`).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn forward_resuming<'a>(
        &'a self,
        gen: &'a Generation,
        session: &mut ServerSession,
        log: &mut AccessLog<'a>,
        pool: &'a Pool,
        req: &Request<'_>,
        answer: Answer,
        (lease, server): (Option<Lease>, Arc<Server>),
        how: &Forwarding,
    ) -> (Forwarded, Option<u64>) {
        let max_resumes = req.max_resumes.unwrap_or(0);
        let Answer {
            session: mut upstream,
            head,
            mut first,
            mut done,
            ..
        } = answer;
        let mut out = match Forwarder::begin(session, &head, how, req.count_usage).await {
            Ok(out) => out,
            Err(end) => {
                respond::release(&self.connector, upstream, &server.peer(), end).await;
                return (end, None);
            }
        };
        let (mut pool, mut lease, mut server) = (pool, lease, server);
        // Servers that cut this stream: the last resort for its continuation.
        let mut avoid: Vec<u64> = Vec::new();
        let mut resumes = 0;
        loop {
            let end = out.pump(session, &mut upstream, first.take(), done).await;
            respond::release(&self.connector, upstream, &server.peer(), end).await;
            record_cut(lease.take(), end);
            if !matches!(
                end,
                Forwarded::UpstreamBroken | Forwarded::UpstreamStalled | Forwarded::MissingDone
            ) {
                return out.end(session, end).await;
            }
            let why_not = match out.stream().map(|s| s.resumable()) {
                _ if resumes >= max_resumes => Some("limit"),
                _ if Instant::now() >= req.deadline => Some("deadline"),
                Some(Err(unsafe_)) => Some(unsafe_.label()),
                None => Some("unreadable"),
                Some(Ok(())) => None,
            };
            if let Some(reason) = why_not {
                tracing::debug!(pool = %pool.name, server = %server.addr, reason, "cut stream not resumed");
                metrics::stream_resume(&pool.name, reason);
                return out.end(session, end).await;
            }
            avoid.push(server.id);
            let (text, tokens) = match out.stream() {
                Some(s) => (s.text().to_owned(), s.tokens()),
                None => return out.end(session, end).await,
            };
            let shape = Shape::Continue {
                text: &text,
                tokens,
            };
            let cut_pool = pool;
            // The log's pool stays the one that began the answer; where it
            // was resumed is logged on its own.
            let answering = log.pool;
            let mut obtained = self.obtain(gen, session, log, req, shape, &avoid).await;
            if matches!(obtained, Obtained::Error(_)) {
                // Nothing else could take it: the servers that cut this
                // stream are the last resort (one may have been a blip).
                obtained = self.obtain(gen, session, log, req, shape, &[]).await;
            }
            log.pool = answering;
            match obtained {
                Obtained::Answer(held, p)
                    if held.answer.head.status.is_success()
                        && respond::is_event_stream(&held.answer.head) =>
                {
                    resumes += 1;
                    metrics::stream_resume(&cut_pool.name, "resumed");
                    tracing::info!(
                        pool = %cut_pool.name,
                        server = %server.addr,
                        cause = end.label(),
                        sent_tokens = tokens,
                        to_pool = %p.name,
                        to_server = %held.server.addr,
                        "cut stream resumed"
                    );
                    log.resumed.push((&p.name, held.server.clone()));
                    out.continue_stream();
                    let held = *held;
                    lease = held.lease;
                    server = held.server;
                    upstream = held.answer.session;
                    first = held.answer.first;
                    done = held.answer.done;
                    pool = p;
                }
                Obtained::Answer(held, p) => {
                    tracing::info!(
                        pool = %cut_pool.name,
                        to_pool = %p.name,
                        status = held.answer.head.status.as_u16(),
                        "continuation of a cut stream refused"
                    );
                    metrics::stream_resume(&cut_pool.name, "refused");
                    drop(held);
                    return out.end(session, end).await;
                }
                Obtained::Error(err) => {
                    tracing::info!(pool = %cut_pool.name, error = err.code, "no server could continue a cut stream");
                    metrics::stream_resume(&cut_pool.name, "failed");
                    return out.end(session, end).await;
                }
                Obtained::Gone => return out.end(session, Forwarded::ClientGone).await,
            }
        }
    }
}
