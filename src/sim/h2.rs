//! The simulated backend over HTTP/2 (by ALPN on TLS, or with prior
//! knowledge on plain TCP): the same routes, answers and faults as over
//! HTTP/1.1, on the `h2` crate. A fault that would cut an HTTP/1
//! connection resets only its stream here (RST_STREAM), as a real HTTP/2
//! server does; streams the client resets are counted.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{Reason, SendStream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::completions::{self, Answer, EventStream};
use super::handlers::{self, Cut, Reply};
use super::http::Request;
use super::{FaultKind, Shared};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const MAX_BODY: usize = 64 * 1024 * 1024;

/// A plain connection that starts with the HTTP/2 preface (h2c with prior
/// knowledge). Looks without consuming.
pub(crate) async fn has_preface(stream: &TcpStream) -> bool {
    let mut buf = [0u8; PREFACE.len()];
    for _ in 0..1000 {
        let n = match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        if buf[..n] != PREFACE[..n] {
            return false;
        }
        if n == PREFACE.len() {
            return true;
        }
        // Part of it so far: peek again shortly.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    false
}

pub(crate) async fn serve<T>(shared: Arc<Shared>, io: T)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn = match h2::server::handshake(io).await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::debug!(error = %e, "sim: HTTP/2 handshake failed");
            return;
        }
    };
    while let Some(next) = conn.accept().await {
        let Ok((req, respond)) = next else { break };
        tokio::spawn(stream(shared.clone(), req, respond));
    }
}

/// One request stream, answered like its HTTP/1 twin.
async fn stream(
    shared: Arc<Shared>,
    req: http::Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let Some(req) = read_request(req).await else {
        let _ = send(
            &shared,
            &mut respond,
            Reply::error(413, "request body too large"),
            None,
        )
        .await;
        return;
    };
    if req.path.starts_with("/_sim/") {
        let reply = handlers::control(&shared, &req);
        let _ = send(&shared, &mut respond, reply, None).await;
        return;
    }
    if req.path == "/metrics" {
        let _ = send(&shared, &mut respond, handlers::metrics(&shared), None).await;
        return;
    }
    if req.path == "/health" {
        match handlers::health(&shared) {
            Some(reply) => {
                let _ = send(&shared, &mut respond, reply, None).await;
            }
            None => {
                wait_or_reset(None, |cx| respond.poll_reset(cx)).await;
            }
        }
        return;
    }
    let (_in_flight, body_sha256) = handlers::begin(&shared, &req, "HTTP/2");
    if let Some(reply) = handlers::over_capacity(&shared) {
        let _ = send(&shared, &mut respond, reply, None).await;
        return;
    }
    let fault = shared.take_fault();
    if let Some(latency) = fault.latency {
        if wait_or_reset(Some(latency), |cx| respond.poll_reset(cx)).await {
            shared.count_stream_reset();
            return;
        }
    }
    let omit_done = fault.kind == FaultKind::EndWithoutDone;
    let cut = match fault.kind {
        FaultKind::None | FaultKind::EndWithoutDone => None,
        FaultKind::Status { code, retry_after } => {
            let mut reply = Reply::error(code, &format!("simulated {code} from {}", shared.name));
            if let Some(r) = retry_after {
                reply.headers.push(("retry-after", r));
            }
            let _ = send(&shared, &mut respond, reply, None).await;
            return;
        }
        FaultKind::Hang => {
            wait_or_reset(None, |cx| respond.poll_reset(cx)).await;
            shared.count_stream_reset();
            return;
        }
        FaultKind::Reset => {
            respond.send_reset(Reason::INTERNAL_ERROR);
            return;
        }
        FaultKind::CloseMidStream { after_tokens } => Some(Cut::Close(after_tokens)),
        FaultKind::StallMidStream { after_tokens } => Some(Cut::Stall(after_tokens)),
        FaultKind::EndMidStream { after_tokens } => Some(Cut::End(after_tokens)),
    };
    if req.method == "POST" && req.path.ends_with("completions") {
        let answer = completions::answer_text(&shared, &req.body);
        let prefill = shared.kv.prefill(&req.body, &answer);
        if !prefill.is_zero() && wait_or_reset(Some(prefill), |cx| respond.poll_reset(cx)).await {
            shared.count_stream_reset();
            return;
        }
    }
    let answer = match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/v1/chat/completions") => {
            completions::answer(&shared, &req.body, "/v1/chat/completions", omit_done)
        }
        ("POST", "/v1/completions") => {
            completions::answer(&shared, &req.body, "/v1/completions", omit_done)
        }
        ("GET" | "HEAD", "/v1/models") => Answer::Reply(handlers::models(&shared)),
        (_, "/ws") => Answer::Reply(Reply::error(400, "WebSocket needs HTTP/1.1")),
        _ => Answer::Reply(handlers::echo(&shared, &req, body_sha256)),
    };
    match answer {
        Answer::Reply(reply) => {
            let cut = if reply.code == 200 { cut } else { None };
            if let Err(Gone) = send(&shared, &mut respond, reply, cut).await {
                shared.count_stream_reset();
            }
        }
        Answer::Stream(events) => {
            if let Err(Gone) = send_events(&shared, &mut respond, &events, cut).await {
                shared.count_stream_reset();
            }
        }
    }
}

/// The client reset the stream (or the connection went away).
struct Gone;

/// The request head and whole body in the sim's own shape; `None` when
/// the body is too large.
async fn read_request(req: http::Request<h2::RecvStream>) -> Option<Request> {
    let (parts, mut recv) = req.into_parts();
    let mut body = BytesMut::new();
    while let Some(chunk) = recv.data().await {
        let Ok(chunk) = chunk else { break };
        let _ = recv.flow_control().release_capacity(chunk.len());
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BODY {
            return None;
        }
    }
    let mut headers = Vec::new();
    // `:authority` is HTTP/2's Host; shown as one when no Host came too.
    if let Some(authority) = parts.uri.authority() {
        if !parts.headers.contains_key(http::header::HOST) {
            headers.push(("host".to_owned(), authority.to_string()));
        }
    }
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers.push((name.as_str().to_owned(), value));
    }
    let target = parts
        .uri
        .path_and_query()
        .map_or("/".to_owned(), |pq| pq.as_str().to_owned());
    Some(Request {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        target,
        headers,
        body: body.freeze(),
        keep_alive: true,
    })
}

fn head(
    code: u16,
    headers: &[(&'static str, String)],
    shared_name: Option<&str>,
) -> http::Response<()> {
    let mut resp = http::Response::builder().status(code);
    for (name, value) in headers {
        resp = resp.header(*name, value.as_str());
    }
    if let Some(name) = shared_name {
        resp = resp.header("x-sim-server", name);
    }
    resp.body(()).unwrap_or_default()
}

/// A whole reply (or, with `cut`, half of its body then a reset or a stall).
async fn send(
    shared: &Shared,
    respond: &mut SendResponse<Bytes>,
    reply: Reply,
    cut: Option<Cut>,
) -> Result<(), Gone> {
    let resp = head(reply.code, &reply.headers, Some(&shared.name));
    let mut body = Bytes::from(reply.body);
    let end = body.is_empty() && cut.is_none();
    let mut out = respond.send_response(resp, end).map_err(|_| Gone)?;
    if end {
        return Ok(());
    }
    if let Some(cut) = cut {
        body.truncate(body.len() / 2);
        out.send_data(body, false).map_err(|_| Gone)?;
        return cut_stream(&mut out, cut).await;
    }
    out.send_data(body, true).map_err(|_| Gone)
}

async fn send_events(
    shared: &Shared,
    respond: &mut SendResponse<Bytes>,
    events: &EventStream,
    cut: Option<Cut>,
) -> Result<(), Gone> {
    let headers = [
        ("content-type", "text/event-stream".to_owned()),
        ("cache-control", "no-cache".to_owned()),
    ];
    let resp = head(200, &headers, Some(&shared.name));
    let mut out = respond.send_response(resp, false).map_err(|_| Gone)?;
    let cut_at = cut.map(|c| match c {
        Cut::Close(n) | Cut::Stall(n) | Cut::End(n) => n.min(events.len()),
    });
    for i in 0..=events.len() {
        if let (Some(at), Some(c)) = (cut_at, cut) {
            if at == i {
                return cut_stream(&mut out, c).await;
            }
        }
        if i == events.len() {
            break;
        }
        if wait_or_reset(Some(shared.token_interval), |cx| out.poll_reset(cx)).await {
            return Err(Gone);
        }
        out.send_data(events.event(i).into(), false)
            .map_err(|_| Gone)?;
    }
    for event in events.tail() {
        out.send_data(event.into(), false).map_err(|_| Gone)?;
    }
    out.send_data(Bytes::new(), true).map_err(|_| Gone)
}

/// Reset the stream or stall it until the client gives up.
async fn cut_stream(out: &mut SendStream<Bytes>, cut: Cut) -> Result<(), Gone> {
    match cut {
        Cut::Close(_) => {
            out.send_reset(Reason::INTERNAL_ERROR);
            Ok(())
        }
        Cut::Stall(_) => {
            wait_or_reset(None, |cx| out.poll_reset(cx)).await;
            Err(Gone)
        }
        Cut::End(_) => out.send_data(Bytes::new(), true).map_err(|_| Gone),
    }
}

/// Wait `dur` (forever when `None`) unless the client resets the stream
/// first; true if it did.
async fn wait_or_reset<F>(dur: Option<Duration>, mut poll_reset: F) -> bool
where
    F: FnMut(&mut Context<'_>) -> Poll<Result<Reason, h2::Error>>,
{
    let reset = poll_fn(|cx| poll_reset(cx).map(|_| ()));
    match dur {
        Some(d) => tokio::time::timeout(d, reset).await.is_ok(),
        None => {
            reset.await;
            true
        }
    }
}
