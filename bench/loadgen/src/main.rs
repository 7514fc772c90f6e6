//! The benchmark suite's load generator (`bench/run`), one JSON object on
//! stdout per run.
//!
//! `loadgen rate`: requests at a constant rate over keep-alive connections,
//! each connection on its own schedule (as wrk2 does). A request's latency is
//! counted from the moment it was due when its connection was still busy with
//! the previous answer (coordinated omission), and from the moment it was
//! sent otherwise, so that the generator's own timer lag is not charged to
//! the server.
//!
//! `loadgen streams`: many concurrent streaming requests (SSE), opened in
//! batches; per stream the time to its response head and first event, and
//! every gap between reads that carried events.
//!
//! Both speak plain HTTP/1.1 over TCP; bodies are framed by Content-Length or
//! chunked encoding. Run `loadgen` without arguments for the options.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

const USAGE: &str = "\
usage:
  loadgen rate --target HOST:PORT --rate N --duration SECS [--conns N] [--path P]
               [--body-file F] [--header 'name: value']... [--timeout SECS]
  loadgen streams --target HOST:PORT --streams N [--batch N] [--batch-interval-ms N]
               [--path P] [--body-file F] [--header 'name: value']... [--timeout SECS]";

struct Opts {
    target: String,
    path: String,
    body: Vec<u8>,
    headers: Vec<String>,
    timeout: Duration,
    rate: f64,
    duration: Duration,
    conns: usize,
    streams: usize,
    batch: usize,
    batch_interval: Duration,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        target: String::new(),
        path: "/v1/chat/completions".into(),
        body:
            br#"{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"max_tokens":1}"#
                .to_vec(),
        headers: Vec::new(),
        timeout: Duration::from_secs(30),
        rate: 0.0,
        duration: Duration::from_secs(5),
        conns: 32,
        streams: 0,
        batch: 250,
        batch_interval: Duration::from_millis(25),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let v = it.next().with_context(|| format!("{flag} needs a value"))?;
        let secs = |v: &str| -> Result<Duration> {
            Ok(Duration::from_secs_f64(
                v.parse()
                    .with_context(|| format!("{flag}: not a number: {v}"))?,
            ))
        };
        let num = |v: &str| -> Result<usize> {
            v.parse()
                .with_context(|| format!("{flag}: not a count: {v}"))
        };
        match flag.as_str() {
            "--target" => o.target = v.clone(),
            "--path" => o.path = v.clone(),
            "--body-file" => {
                o.body = std::fs::read(v).with_context(|| format!("reading {v}"))?;
            }
            "--header" => o.headers.push(v.clone()),
            "--timeout" => o.timeout = secs(v)?,
            "--rate" => o.rate = v.parse().with_context(|| format!("--rate: {v}"))?,
            "--duration" => o.duration = secs(v)?,
            "--conns" => o.conns = num(v)?.max(1),
            "--streams" => o.streams = num(v)?,
            "--batch" => o.batch = num(v)?.max(1),
            "--batch-interval-ms" => o.batch_interval = Duration::from_millis(num(v)? as u64),
            _ => bail!("unknown option {flag}\n{USAGE}"),
        }
    }
    if o.target.is_empty() {
        bail!("--target is required\n{USAGE}");
    }
    Ok(o)
}

fn request_bytes(o: &Opts) -> Vec<u8> {
    let mut r = format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        o.path,
        o.target,
        o.body.len()
    );
    for h in &o.headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    let mut b = r.into_bytes();
    b.extend_from_slice(&o.body);
    b
}

/// An answer read off a connection: its status, whether the server keeps
/// the connection open, and its body.
struct Answer {
    status: u16,
    keep_alive: bool,
}

/// Reads from `conn` into `buf` until a whole response head is there; returns
/// the status, the head's length, the body framing and whether the connection
/// stays open.
async fn read_head(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(u16, usize, Framing, bool)> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(len) = resp.parse(buf).context("bad response head")? {
            let status = resp.code.unwrap_or(0);
            let mut framing = Framing::Close;
            let mut keep_alive = resp.version == Some(1);
            for h in resp.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    let n = std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse().ok())
                        .context("bad content-length")?;
                    framing = Framing::Length(n);
                } else if h.name.eq_ignore_ascii_case("transfer-encoding")
                    && h.value.eq_ignore_ascii_case(b"chunked")
                {
                    framing = Framing::Chunked;
                } else if h.name.eq_ignore_ascii_case("connection") {
                    keep_alive = !h.value.eq_ignore_ascii_case(b"close");
                }
            }
            if matches!(framing, Framing::Close) {
                keep_alive = false;
            }
            return Ok((status, len, framing, keep_alive));
        }
        fill(conn, buf).await?;
    }
}

enum Framing {
    Length(usize),
    Chunked,
    Close,
}

async fn fill(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Result<()> {
    buf.reserve(16 * 1024);
    let n = conn.read_buf(buf).await.context("read")?;
    if n == 0 {
        bail!("connection closed");
    }
    Ok(())
}

/// Where the chunked body's end is, if `body` holds all of it.
fn chunked_end(body: &[u8]) -> Result<Option<usize>> {
    let mut at = 0;
    loop {
        let Some(eol) = memchr::memmem::find(&body[at..], b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&body[at..at + eol]).context("bad chunk size")?;
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .context("bad chunk size")?;
        at += eol + 2;
        if size == 0 {
            // No trailers from the servers measured here: the last CRLF.
            return Ok((body.len() >= at + 2).then_some(at + 2));
        }
        if body.len() < at + size + 2 {
            return Ok(None);
        }
        at += size + 2;
    }
}

/// Reads one whole response (head and body) from `conn`.
async fn read_answer(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Answer> {
    let (status, head, framing, keep_alive) = read_head(conn, buf).await?;
    match framing {
        Framing::Length(n) => {
            while buf.len() < head + n {
                fill(conn, buf).await?;
            }
            buf.drain(..head + n);
        }
        Framing::Chunked => loop {
            if let Some(end) = chunked_end(&buf[head..])? {
                buf.drain(..head + end);
                break;
            }
            fill(conn, buf).await?;
        },
        Framing::Close => {
            while fill(conn, buf).await.is_ok() {}
            buf.clear();
        }
    }
    Ok(Answer { status, keep_alive })
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

fn epoch_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// Percentiles (µs) of `v`, sorted in place.
fn percentiles(v: &mut [u64]) -> Value {
    v.sort_unstable();
    let at = |q: f64| -> Value {
        if v.is_empty() {
            return Value::Null;
        }
        let i = ((q / 100.0) * v.len() as f64).ceil() as usize;
        json!(v[i.clamp(1, v.len()) - 1])
    };
    json!({
        "count": v.len(),
        "p50": at(50.0), "p75": at(75.0), "p90": at(90.0), "p99": at(99.0),
        "p99_9": at(99.9), "p99_99": at(99.99), "max": v.last(),
        "mean": if v.is_empty() { 0.0 } else { v.iter().sum::<u64>() as f64 / v.len() as f64 },
    })
}

#[derive(Default)]
struct RateStats {
    latencies: Vec<u64>,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
    late_sends: u64,
}

async fn rate(o: Opts) -> Result<Value> {
    if o.rate <= 0.0 {
        bail!("--rate must be above 0");
    }
    let req = Arc::new(request_bytes(&o));
    let stats = Arc::new(Mutex::new(RateStats::default()));
    let start = Instant::now() + Duration::from_millis(50);
    let total = (o.rate * o.duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / o.rate);
    let conns = o.conns as u64;
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (req, stats, target, timeout) =
            (req.clone(), stats.clone(), o.target.clone(), o.timeout);
        tasks.push(tokio::spawn(async move {
            let mut conn: Option<TcpStream> = None;
            let mut buf = Vec::with_capacity(16 * 1024);
            let mut busy_until = start;
            let mut k = c;
            let deadline = start + timeout + interval * total as u32;
            while k < total {
                let due = start + interval * k as u32;
                k += conns;
                tokio::time::sleep_until(due.into()).await;
                let sent = Instant::now();
                if sent > deadline {
                    stats
                        .lock()
                        .await
                        .errors
                        .entry("deadline".into())
                        .and_modify(|n| *n += 1)
                        .or_insert(1);
                    continue;
                }
                // Counted from when it was due if the connection was still
                // busy then; else from the send (the timer's lag is ours).
                let from = if busy_until > due { due } else { sent };
                let outcome = tokio::time::timeout(timeout, async {
                    if conn.is_none() {
                        let s = TcpStream::connect(&target).await.context("connect")?;
                        s.set_nodelay(true)?;
                        conn = Some(s);
                        buf.clear();
                    }
                    let s = conn.as_mut().context("no connection")?;
                    s.write_all(&req).await.context("write")?;
                    read_answer(s, &mut buf).await
                })
                .await;
                let done = Instant::now();
                busy_until = done;
                let mut st = stats.lock().await;
                if from == due {
                    st.late_sends += 1;
                }
                match outcome {
                    Ok(Ok(a)) => {
                        *st.statuses.entry(a.status).or_default() += 1;
                        if (200..300).contains(&a.status) {
                            st.latencies.push(micros(done - from));
                        }
                        if !a.keep_alive {
                            conn = None;
                        }
                    }
                    Ok(Err(e)) => {
                        *st.errors.entry(format!("{e:#}")).or_default() += 1;
                        conn = None;
                    }
                    Err(_) => {
                        *st.errors.entry("timeout".into()).or_default() += 1;
                        conn = None;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.context("a connection's task failed")?;
    }
    let elapsed = start.elapsed();
    let mut st = stats.lock().await;
    let ok = st.latencies.len();
    Ok(json!({
        "mode": "rate", "target": o.target, "rate": o.rate, "conns": o.conns,
        "sent": total, "ok": ok, "elapsed_s": elapsed.as_secs_f64(),
        "statuses": st.statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_,_>>(),
        "errors": st.errors.clone(), "late_sends": st.late_sends,
        "latency_us": percentiles(&mut st.latencies),
    }))
}

#[derive(Default)]
struct StreamStats {
    ok: u64,
    failed: BTreeMap<String, u64>,
    head_us: Vec<u64>,
    ttfb_us: Vec<u64>,
    gaps_us: Vec<u64>,
    events: u64,
    open: u64,
    max_open: u64,
    heads: u64,
    sent: u64,
    /// Epoch ms: when every stream had sent its request, when every stream
    /// had its head, and when any first had an event.
    all_sent_ms: Option<f64>,
    all_heads_ms: Option<f64>,
    first_event_ms: Option<f64>,
}

async fn one_stream(
    target: &str,
    req: &[u8],
    stats: &Mutex<StreamStats>,
    total: u64,
    connected: &mut bool,
) -> Result<()> {
    let mut conn = TcpStream::connect(target).await.context("connect")?;
    conn.set_nodelay(true)?;
    {
        let mut st = stats.lock().await;
        st.open += 1;
        st.max_open = st.max_open.max(st.open);
        *connected = true;
    }
    let sent = Instant::now();
    conn.write_all(req).await.context("write")?;
    {
        let mut st = stats.lock().await;
        st.sent += 1;
        if st.sent == total {
            st.all_sent_ms = Some(epoch_ms());
        }
    }
    let mut buf = Vec::with_capacity(4096);
    let (status, head, _, _) = read_head(&mut conn, &mut buf).await?;
    let head_at = Instant::now();
    {
        let mut st = stats.lock().await;
        st.head_us.push(micros(head_at - sent));
        st.heads += 1;
        if st.heads == total {
            st.all_heads_ms = Some(epoch_ms());
        }
    }
    if status != 200 {
        bail!("status {status}");
    }
    buf.drain(..head);
    let mut last: Option<Instant> = None;
    let mut events = 0u64;
    let done = memchr::memmem::Finder::new(b"data: [DONE]");
    let data = memchr::memmem::Finder::new(b"data: ");
    let mut scanned = 0;
    loop {
        let n = data.find_iter(&buf[scanned..]).count() as u64;
        let finished = done.find(&buf[scanned..]).is_some();
        if n > 0 {
            let now = Instant::now();
            let mut st = stats.lock().await;
            match last {
                None => {
                    st.ttfb_us.push(micros(now - sent));
                    if st.first_event_ms.is_none() {
                        st.first_event_ms = Some(epoch_ms());
                    }
                }
                Some(t) => st.gaps_us.push(micros(now - t)),
            }
            st.events += n;
            events += n;
            last = Some(now);
        }
        if finished {
            break;
        }
        // Keep a few bytes: a marker may straddle two reads.
        scanned = buf.len().saturating_sub(16);
        let n = conn.read_buf(&mut buf).await.context("read")?;
        if n == 0 {
            bail!("closed after {events} events");
        }
        if buf.len() > 64 * 1024 {
            let keep = buf.len() - 16;
            buf.drain(..keep);
            scanned = 0;
        }
    }
    Ok(())
}

async fn streams(o: Opts) -> Result<Value> {
    let req = Arc::new(request_bytes(&o));
    let stats = Arc::new(Mutex::new(StreamStats::default()));
    let started = Instant::now();
    let total = o.streams as u64;
    let mut tasks = Vec::with_capacity(o.streams);
    let mut opened = 0;
    while opened < o.streams {
        for _ in 0..o.batch.min(o.streams - opened) {
            let (req, stats, target, timeout) =
                (req.clone(), stats.clone(), o.target.clone(), o.timeout);
            tasks.push(tokio::spawn(async move {
                let mut connected = false;
                let r = tokio::time::timeout(
                    timeout,
                    one_stream(&target, &req, &stats, total, &mut connected),
                )
                .await;
                let mut st = stats.lock().await;
                match r {
                    Ok(Ok(())) => st.ok += 1,
                    Ok(Err(e)) => {
                        let kind = format!("{e:#}");
                        let kind = kind.split(" after ").next().unwrap_or("").to_string();
                        *st.failed.entry(kind).or_default() += 1
                    }
                    Err(_) => *st.failed.entry("timeout".into()).or_default() += 1,
                }
                // Only a stream that got its connection was counted as open.
                if connected {
                    st.open -= 1;
                }
            }));
            opened += 1;
        }
        tokio::time::sleep(o.batch_interval).await;
    }
    let ramp = started.elapsed();
    for t in tasks {
        t.await.context("a stream's task failed")?;
    }
    let mut st = stats.lock().await;
    Ok(json!({
        "mode": "streams", "target": o.target, "streams": o.streams,
        "ok": st.ok, "failed": st.failed.clone(), "events": st.events,
        "max_open": st.max_open, "ramp_s": ramp.as_secs_f64(),
        "elapsed_s": started.elapsed().as_secs_f64(),
        "all_sent_ms": st.all_sent_ms, "all_heads_ms": st.all_heads_ms,
        "first_event_ms": st.first_event_ms,
        "head_us": percentiles(&mut st.head_us),
        "ttfb_us": percentiles(&mut st.ttfb_us),
        "gap_us": percentiles(&mut st.gaps_us),
    }))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(mode) = args.first() else {
        bail!("{USAGE}");
    };
    let o = parse(&args[1..])?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let out = match mode.as_str() {
        "rate" => rt.block_on(rate(o))?,
        "streams" => {
            if o.streams == 0 {
                bail!("--streams must be above 0");
            }
            rt.block_on(streams(o))?
        }
        _ => bail!("unknown mode {mode}\n{USAGE}"),
    };
    println!("{out}");
    Ok(())
}
