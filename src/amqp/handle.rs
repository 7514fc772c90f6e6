//! One message: read it as a request, run it through the job runner with
//! spare capacity only (retrying transient failures), publish the reply
//! and any dead letter with publisher confirms, and only then ack it.

use super::message::{self, Invalid, Settle};
use crate::config::AmqpConsumer;
use crate::drain::Drain;
use crate::jobs::now_ms;
use crate::jobs::record::{Job, Problem, RunEnd};
use crate::proxy::Gateway;
use bytes::Bytes;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::{BasicProperties, Channel};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// How often a message waiting for a free slot looks again.
const SLOT_POLL: Duration = Duration::from_millis(20);

pub(super) struct Ctx {
    pub gateway: Arc<Gateway>,
    pub drain: Arc<Drain>,
    pub cfg: AmqpConsumer,
    /// In confirm mode.
    pub publish: Channel,
    pub held: Arc<AtomicUsize>,
    /// Told when publishing fails: the session starts again.
    pub broken: mpsc::Sender<String>,
}

/// Counts a message as held until it is settled or abandoned.
struct Holding(Arc<AtomicUsize>);

impl Drop for Holding {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn aborted(abort: &mut watch::Receiver<bool>) {
    if abort.wait_for(|a| *a).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Sleep, unless the session ends first (`false`).
async fn pause(d: Duration, abort: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = aborted(abort) => false,
    }
}

pub(super) async fn handle(ctx: Arc<Ctx>, delivery: Delivery, abort: watch::Receiver<bool>) {
    let _holding = Holding(ctx.held.clone());
    // A drain waits for messages in hand as for requests.
    let _in_flight = ctx.drain.begin();
    let Some((settle, status, id)) = serve(&ctx, &delivery, abort).await else {
        // The session ended: RabbitMQ delivers the message again.
        return;
    };
    match deliver(&ctx, &delivery, &settle, status).await {
        Ok(()) => {
            crate::metrics::amqp_message(&ctx.cfg.name, settle.result);
            tracing::info!(
                consumer = %ctx.cfg.name,
                message_id = %id,
                result = settle.result,
                status = settle.reply.status,
                attempts = settle.reply.attempts,
                redelivered = delivery.redelivered,
                "amqp message settled"
            );
        }
        Err(why) => {
            tracing::warn!(consumer = %ctx.cfg.name, message_id = %id, error = %why, "amqp message not settled; the broker will deliver it again");
            let _ = ctx.broken.try_send(why);
        }
    }
}

fn refused(why: Invalid, id: String) -> Option<(Settle, Option<u16>, String)> {
    tracing::debug!(message_id = %id, code = why.code, reason = %why.message, "amqp message is not a request");
    Some((message::settle_invalid(&why), Some(why.status), id))
}

/// Run the message to its end: how to settle it, the last status, its id.
/// `None` when the session ended first.
async fn serve(
    ctx: &Ctx,
    delivery: &Delivery,
    mut abort: watch::Receiver<bool>,
) -> Option<(Settle, Option<u16>, String)> {
    let fallback_id = || {
        delivery
            .properties
            .message_id()
            .as_ref()
            .map_or_else(String::new, |m| m.as_str().to_owned())
    };
    let inbound = match message::read(&delivery.properties, &ctx.cfg.path) {
        Ok(i) => i,
        Err(why) => return refused(why, fallback_id()),
    };
    let gen = ctx.gateway.generation();
    let limit = gen.config.limits.max_request_body;
    if delivery.data.len() as u64 > limit {
        let why = Invalid {
            status: 413,
            code: "body_too_large",
            message: format!(
                "the message body is larger than limits.max_request_body ({limit} bytes)"
            ),
        };
        return refused(why, inbound.id);
    }
    let wire = Bytes::copy_from_slice(&delivery.data);
    let prepared = match crate::proxy::edge::prepare(&gen.config, &gen.routes, &inbound.head, wire)
    {
        Ok(p) => p,
        Err(e) => {
            let why = Invalid {
                status: e.status,
                code: e.code,
                message: e.message,
            };
            return refused(why, inbound.id);
        }
    };
    // A reply is one message: a stream is run whole.
    let body = crate::openai::without_stream(&prepared.body).map_or(prepared.body, Bytes::from);
    let headers = inbound
        .head
        .headers
        .iter()
        .filter(|(n, _)| !(prepared.decoded && *n == http::header::CONTENT_ENCODING))
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let route = gen.config.routes[prepared.route_idx].name.clone();
    let path = inbound
        .head
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str());
    let mut job = Job::queued(inbound.id.clone(), route, "POST", path, headers, now_ms());
    drop(gen);
    let policy = ctx.cfg.policy;
    loop {
        let wait = job.next_ms.saturating_sub(now_ms());
        if wait > 0 && !pause(Duration::from_millis(wait), &mut abort).await {
            return None;
        }
        // Each attempt on the routes and pools in force now.
        let gen = ctx.gateway.generation();
        let Some(route_idx) = gen.config.routes.iter().position(|r| r.name == job.route) else {
            let p = Problem {
                code: "route_gone".into(),
                message: format!("route '{}' was removed", job.route),
            };
            job.finish_run(
                RunEnd::Failed {
                    response: None,
                    problem: p,
                },
                now_ms(),
                &policy,
            );
            break;
        };
        let pool = &gen.pools[gen.config.routes[route_idx].pool];
        if !pool.has_free_slot(Instant::now()) {
            // Interactive requests first: wait for a slot nobody waits for.
            if !pause(SLOT_POLL, &mut abort).await {
                return None;
            }
            continue;
        }
        job.start(now_ms());
        let (end, result) = ctx
            .gateway
            .run_job(
                &gen,
                route_idx,
                &job,
                body.clone(),
                abort.clone(),
                ctx.cfg.max_reply_bytes,
            )
            .await;
        if end == RunEnd::Cancelled {
            return None;
        }
        let no_capacity = end == RunEnd::NoCapacity;
        job.finish_run(end, now_ms(), &policy);
        if job.state.finished() {
            let status = job.response.as_ref().map(|r| r.status);
            return Some((message::settle_job(&job, result), status, job.id));
        }
        if no_capacity && !pause(SLOT_POLL, &mut abort).await {
            return None;
        }
        if !no_capacity {
            tracing::debug!(message_id = %job.id, attempts = job.attempts, error = ?job.error, "amqp message will be tried again");
        }
    }
    let status = job.response.as_ref().map(|r| r.status);
    Some((message::settle_job(&job, None), status, job.id))
}

/// Publish with a confirm; `Ok(false)` when the broker returned it
/// (nothing to route it to).
async fn publish(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
) -> Result<bool, String> {
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let confirm = ch
        .basic_publish(exchange, routing_key, options, body, props)
        .await
        .map_err(|e| format!("publishing to '{exchange}' failed: {e}"))?
        .await
        .map_err(|e| format!("the broker did not confirm a publish to '{exchange}': {e}"))?;
    match confirm {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(true),
        Confirmation::Ack(Some(_)) => Ok(false),
        Confirmation::Nack(_) => Err(format!("the broker refused a publish to '{exchange}'")),
    }
}

/// Reply, dead-letter, then ack: each confirmed before the next.
async fn deliver(
    ctx: &Ctx,
    delivery: &Delivery,
    settle: &Settle,
    status: Option<u16>,
) -> Result<(), String> {
    let props = &delivery.properties;
    if let Some(reply_to) = props.reply_to().as_ref().filter(|r| !r.as_str().is_empty()) {
        let reply = message::reply_properties(props, &settle.reply);
        if !publish(
            &ctx.publish,
            "",
            reply_to.as_str(),
            &settle.reply.body,
            reply,
        )
        .await?
        {
            tracing::warn!(consumer = %ctx.cfg.name, reply_to = %reply_to, "the reply queue does not exist; the reply is dropped");
        }
    }
    if let Some(problem) = &settle.dead {
        let dead = message::dead_letter_properties(props, problem, status, settle.reply.attempts);
        let routed = publish(
            &ctx.publish,
            &ctx.cfg.dead_letter_exchange,
            &ctx.cfg.queue,
            &delivery.data,
            dead,
        )
        .await;
        match routed {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                consumer = %ctx.cfg.name,
                exchange = %ctx.cfg.dead_letter_exchange,
                "no queue is bound to the dead-letter exchange; the message is dropped"
            ),
            Err(why) => {
                // The broker's own dead-lettering (the queue's
                // x-dead-letter-exchange), without the reason; the
                // publishing channel is started again.
                let nack = BasicNackOptions {
                    requeue: false,
                    multiple: false,
                };
                delivery
                    .nack(nack)
                    .await
                    .map_err(|e| format!("a nack failed: {e}"))?;
                tracing::warn!(consumer = %ctx.cfg.name, error = %why, "dead letter not published; nacked to the queue's dead-letter exchange instead");
                let _ = ctx.broken.try_send(why);
                return Ok(());
            }
        }
    }
    delivery
        .ack(BasicAckOptions::default())
        .await
        .map(|_| ())
        .map_err(|e| format!("an ack failed: {e}"))
}
