//! One consumer's life: connect, declare (or check) its queues, consume
//! with a prefetch window that follows free backend slots, and on any loss
//! of the broker start again with backoff. Messages in hand when the
//! connection goes are abandoned unacked: RabbitMQ delivers them again.

use super::handle::{handle, Ctx};
use super::{message, Link, State};
use crate::config::AmqpConsumer;
use crate::drain::Drain;
use crate::proxy::Gateway;
use futures_util::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often the prefetch window is recomputed.
const WINDOW_EVERY: Duration = Duration::from_millis(100);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_RETRY: Duration = Duration::from_millis(250);
const LAST_RETRY: Duration = Duration::from_secs(10);

/// Consume `cfg`'s queue until the process stops.
pub async fn run(gateway: Arc<Gateway>, drain: Arc<Drain>, cfg: AmqpConsumer, state: Arc<State>) {
    let mut wait = FIRST_RETRY;
    let mut was_connected = true;
    loop {
        if drain.is_draining() {
            return;
        }
        state.set(Link::Connecting {
            since: Instant::now(),
        });
        let began = Instant::now();
        let why = match session(&gateway, &drain, &cfg, &state).await {
            Ok(()) => return,
            Err(why) => why,
        };
        // Said once when the broker goes; each failed try after that quietly.
        if was_connected || state.connected() {
            tracing::warn!(consumer = %cfg.name, broker = %cfg.broker, error = %why, "amqp consumer disconnected; reconnecting");
        } else {
            tracing::debug!(consumer = %cfg.name, broker = %cfg.broker, error = %why, "amqp broker still unreachable");
        }
        was_connected = false;
        state.set(Link::Disconnected {
            since: Instant::now(),
            why,
        });
        // A session that lasted resets the backoff.
        if began.elapsed() > LAST_RETRY {
            wait = FIRST_RETRY;
        }
        let jittered = wait.mul_f64(rand::random::<f64>() * 0.5 + 0.75);
        tokio::time::sleep(jittered).await;
        wait = (wait * 2).min(LAST_RETRY);
    }
}

/// Text for an AMQP error (it never holds the URL).
fn text(e: lapin::Error) -> String {
    e.to_string()
}

async fn connect(cfg: &AmqpConsumer) -> Result<Connection, String> {
    let uri = super::uri::parse(&cfg.url.0)?;
    let props = ConnectionProperties::default()
        .with_connection_name(LongString::from(format!("ballast {}", cfg.name)))
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio::current());
    let mut tls = lapin::tcp::OwnedTLSConfig::default();
    if let Some(ca) = &cfg.ca_file {
        // Checked at load; read again for each connection (it may be renewed).
        let pem = std::fs::read_to_string(ca)
            .map_err(|e| format!("cannot read ca_file {}: {e}", ca.display()))?;
        tls.cert_chain = Some(pem);
    }
    let connect = Connection::connect_uri_with_config(uri, props, tls);
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("cannot connect: {e}")),
        Err(_) => Err(format!(
            "cannot connect: no answer in {}s",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// The queue, its dead-letter exchange and the queue bound to that:
/// declared (durable) or, with `declare = false`, checked to exist.
async fn topology(ch: &Channel, cfg: &AmqpConsumer) -> Result<(), String> {
    let passive = !cfg.declare;
    let explain = |what: &str, e: lapin::Error| {
        let e = text(e);
        if e.contains("PRECONDITION_FAILED") {
            format!(
                "{what} exists with other settings ({e}); \
                 set declare = false to use it as it is"
            )
        } else if e.contains("NOT_FOUND") {
            format!("{what} does not exist ({e}); set declare = true to create it")
        } else {
            format!("{what}: {e}")
        }
    };
    ch.exchange_declare(
        &cfg.dead_letter_exchange,
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            passive,
            durable: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .map_err(|e| explain(&format!("exchange '{}'", cfg.dead_letter_exchange), e))?;
    if cfg.declare {
        let dead = format!("{}.dead", cfg.queue);
        ch.queue_declare(
            &dead,
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| explain(&format!("queue '{dead}'"), e))?;
        ch.queue_bind(
            &dead,
            &cfg.dead_letter_exchange,
            "",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| explain(&format!("binding of queue '{dead}'"), e))?;
    }
    let mut args = FieldTable::default();
    if cfg.declare {
        // What the broker itself dead-letters (a nack) goes there too.
        args.insert(
            ShortString::from("x-dead-letter-exchange"),
            AMQPValue::LongString(LongString::from(
                cfg.dead_letter_exchange.as_bytes().to_vec(),
            )),
        );
    }
    ch.queue_declare(
        &cfg.queue,
        QueueDeclareOptions {
            passive,
            durable: true,
            ..QueueDeclareOptions::default()
        },
        args,
    )
    .await
    .map_err(|e| explain(&format!("queue '{}'", cfg.queue), e))?;
    Ok(())
}

/// The prefetch window now: messages held plus the free slots of the pools
/// the consumer's path routes to.
fn window(gateway: &Gateway, cfg: &AmqpConsumer, held: usize) -> u16 {
    let gen = gateway.generation();
    let now = Instant::now();
    let mut free = Some(0u32);
    let mut seen = Vec::new();
    for r in gen.config.routes.iter() {
        if !cfg.path.starts_with(&r.path_prefix) || seen.contains(&r.pool) {
            continue;
        }
        seen.push(r.pool);
        free = match (free, gen.pools[r.pool].free_slots(now)) {
            (Some(a), Some(b)) => Some(a.saturating_add(b)),
            _ => None,
        };
    }
    message::window(held, free, cfg.prefetch)
}

/// One connection's life; `Ok` when the gateway stops.
async fn session(
    gateway: &Arc<Gateway>,
    drain: &Arc<Drain>,
    cfg: &AmqpConsumer,
    state: &Arc<State>,
) -> Result<(), String> {
    let conn = connect(cfg).await?;
    let consume = conn.create_channel().await.map_err(text)?;
    let publish = conn.create_channel().await.map_err(text)?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(text)?;
    topology(&consume, cfg).await?;
    let held = state.held.clone();
    let mut current = window(gateway, cfg, held.load(Ordering::Acquire));
    // Channel-wide (global): the one prefetch setting the broker applies
    // to a consumer already running when it changes.
    let qos = BasicQosOptions { global: true };
    consume.basic_qos(current, qos).await.map_err(text)?;
    state.window.store(current, Ordering::Relaxed);
    crate::metrics::amqp_prefetch(&cfg.name, current);
    let tag = format!("ballast-{}-{}", std::process::id(), cfg.name);
    let mut deliveries = consume
        .basic_consume(
            &cfg.queue,
            &tag,
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(text)?;
    state.set(Link::Connected {
        since: Instant::now(),
    });
    tracing::info!(consumer = %cfg.name, broker = %cfg.broker, queue = %cfg.queue, prefetch = current, "amqp consumer connected");

    // Messages in hand stop when this session ends; a publish that fails
    // ends it.
    let (abort, aborted) = watch::channel(false);
    let (broken_tx, mut broken) = tokio::sync::mpsc::channel::<String>(1);
    let ctx = Arc::new(Ctx {
        gateway: gateway.clone(),
        drain: drain.clone(),
        cfg: cfg.clone(),
        publish,
        held: held.clone(),
        broken: broken_tx,
    });
    let mut tick = tokio::time::interval(WINDOW_EVERY);
    let mut consuming = true;
    let end = loop {
        tokio::select! {
            d = deliveries.next(), if consuming => match d {
                Some(Ok(delivery)) => {
                    held.fetch_add(1, Ordering::AcqRel);
                    tokio::spawn(handle(ctx.clone(), delivery, aborted.clone()));
                }
                Some(Err(e)) => break Err(text(e)),
                None => break Err("the broker cancelled the consumer (queue deleted?)".to_owned()),
            },
            why = broken.recv() => break Err(why.unwrap_or_default()),
            _ = tick.tick() => {
                if consuming && drain.is_draining() {
                    // Take no more; what is in hand finishes (the drain
                    // waits for it), then the process ends.
                    consuming = false;
                    let _ = consume.basic_cancel(&tag, BasicCancelOptions::default()).await;
                    tracing::info!(consumer = %cfg.name, held = held.load(Ordering::Acquire), "amqp consumer stopped taking messages (draining)");
                }
                if !consuming {
                    if held.load(Ordering::Acquire) == 0 {
                        break Ok(());
                    }
                    continue;
                }
                let w = window(gateway, cfg, held.load(Ordering::Acquire));
                if w != current {
                    consume.basic_qos(w, qos).await.map_err(text)?;
                    current = w;
                    state.window.store(w, Ordering::Relaxed);
                    crate::metrics::amqp_prefetch(&cfg.name, w);
                }
            }
        }
    };
    if end.is_err() {
        let _ = abort.send(true);
    }
    let _ = conn.close(200, "ballast stopping").await;
    end
}
