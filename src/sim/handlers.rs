//! Routes of the simulated backend: traffic (with faults), /health and the
//! `/_sim/` control plane.

use std::sync::Arc;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::completions;
use super::http::{self, Conn, Framing, Incoming, Request};
use super::ws;
use super::{Fault, FaultKind, HealthMode, InFlight, RequestRecord, Shared};

/// What to do with the connection after a response.
pub(crate) enum Flow {
    /// Serve the next request if the client allows keep-alive.
    Keep,
    /// Graceful close (FIN).
    Close,
    /// Abortive close (RST).
    Reset,
}

/// Where a mid-response fault cuts the response.
#[derive(Clone, Copy)]
pub(crate) enum Cut {
    Close(u32),
    Stall(u32),
    /// End the body cleanly there (a stream with neither its
    /// `finish_reason` nor `[DONE]`).
    End(u32),
}

/// A response with a fixed-length body.
pub(crate) struct Reply {
    pub code: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(code: u16, v: &Value) -> Reply {
        Reply {
            code,
            headers: vec![("content-type", "application/json".to_string())],
            body: serde_json::to_vec(v).unwrap_or_default(),
        }
    }

    /// An OpenAI-shaped error body.
    pub fn error(code: u16, message: &str) -> Reply {
        let kind = match code {
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        };
        let body =
            json!({"error": {"message": message, "type": kind, "param": null, "code": null}});
        Reply::json(code, &body)
    }
}

pub(crate) async fn serve_connection(shared: Arc<Shared>, stream: super::io::SimIo) {
    let mut conn = Conn::new(stream);
    loop {
        let req = match conn.read_request().await {
            Incoming::Request(req) => req,
            Incoming::Closed => return,
            Incoming::Bad(code, msg) => {
                tracing::debug!(code, %msg, "sim: bad request");
                let reply = Reply::error(code, &msg);
                let _ = send(&shared, &mut conn, reply, false, false, None).await;
                conn.close().await;
                return;
            }
        };
        match handle(&shared, &mut conn, &req).await {
            Flow::Keep if req.keep_alive => {}
            Flow::Keep | Flow::Close => {
                conn.close().await;
                return;
            }
            Flow::Reset => {
                conn.reset();
                return;
            }
        }
    }
}

async fn handle(shared: &Arc<Shared>, conn: &mut Conn, req: &Request) -> Flow {
    if req.path.starts_with("/_sim/") {
        let reply = control(shared, req);
        return send(shared, conn, reply, req.keep_alive, is_head(req), None).await;
    }
    if req.path == "/metrics" {
        let reply = metrics(shared);
        return send(shared, conn, reply, req.keep_alive, is_head(req), None).await;
    }
    if req.path == "/health" {
        let Some(reply) = health(shared) else {
            conn.wait_or_disconnect(None).await;
            return Flow::Close;
        };
        return send(shared, conn, reply, req.keep_alive, is_head(req), None).await;
    }
    traffic(shared, conn, req).await
}

/// `/metrics`: vLLM's gauges and counters (see `kv`).
pub(crate) fn metrics(shared: &Shared) -> Reply {
    let text = shared.kv.metrics(&shared.model, shared.stats().in_flight);
    Reply {
        code: 200,
        headers: vec![("content-type", "text/plain; version=0.0.4".to_string())],
        body: text.into_bytes(),
    }
}

/// `/health` as the health mode says; `None`: hang.
pub(crate) fn health(shared: &Shared) -> Option<Reply> {
    shared.count_health_check();
    match shared.health() {
        HealthMode::Ok => Some(Reply::json(200, &json!({"status": "ok"}))),
        HealthMode::Fail => Some(Reply::json(503, &json!({"status": "fail"}))),
        HealthMode::Hang => None,
    }
}

/// Count and log a traffic request (the guard keeps it in flight) and
/// return its body's SHA-256.
pub(crate) fn begin(shared: &Arc<Shared>, req: &Request, version: &str) -> (InFlight, String) {
    let body_sha256 = sha256_hex(&req.body);
    let guard = shared.begin_request(RequestRecord {
        at_ms: shared.elapsed_ms(),
        method: req.method.clone(),
        path: req.target.clone(),
        headers: req.headers.clone(),
        body_len: req.body.len() as u64,
        body_sha256: body_sha256.clone(),
        version: version.into(),
        body_text: String::from_utf8_lossy(&req.body[..req.body.len().min(super::BODY_TEXT_MAX)])
            .into_owned(),
    });
    (guard, body_sha256)
}

/// The 503 of a server at `max_concurrency` (counting the request that
/// just began).
pub(crate) fn over_capacity(shared: &Shared) -> Option<Reply> {
    let max = shared.max_concurrency;
    (max > 0 && shared.stats().in_flight > max).then(|| {
        let msg = format!("server busy: {max} requests in flight at {}", shared.name);
        Reply::error(503, &msg)
    })
}

pub(crate) fn models(shared: &Shared) -> Reply {
    Reply::json(
        200,
        &json!({"object": "list", "data": [{
            "id": shared.model, "object": "model", "created": 0, "owned_by": shared.name,
        }]}),
    )
}

fn is_head(req: &Request) -> bool {
    req.method == "HEAD"
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn traffic(shared: &Arc<Shared>, conn: &mut Conn, req: &Request) -> Flow {
    let (_in_flight, body_sha256) = begin(shared, req, "HTTP/1.1");
    if let Some(reply) = over_capacity(shared) {
        return send(shared, conn, reply, req.keep_alive, is_head(req), None).await;
    }
    let fault = shared.take_fault();
    if let Some(latency) = fault.latency {
        if conn.wait_or_disconnect(Some(latency)).await {
            shared.count_disconnect();
            return Flow::Close;
        }
    }
    let omit_done = fault.kind == FaultKind::EndWithoutDone;
    let cut = match fault.kind {
        FaultKind::None | FaultKind::EndWithoutDone => None,
        FaultKind::Status { code, retry_after } => {
            let msg = format!("simulated {code} from {}", shared.name);
            let mut reply = Reply::error(code, &msg);
            if let Some(r) = retry_after {
                reply.headers.push(("retry-after", r));
            }
            return send(shared, conn, reply, req.keep_alive, is_head(req), None).await;
        }
        FaultKind::Hang => {
            conn.wait_or_disconnect(None).await;
            shared.count_disconnect();
            return Flow::Close;
        }
        FaultKind::Reset => return Flow::Reset,
        FaultKind::CloseMidStream { after_tokens } => Some(Cut::Close(after_tokens)),
        FaultKind::StallMidStream { after_tokens } => Some(Cut::Stall(after_tokens)),
        FaultKind::EndMidStream { after_tokens } => Some(Cut::End(after_tokens)),
    };
    let head_only = is_head(req);
    let reply = match (req.method.as_str(), req.path.as_str()) {
        (_, "/ws") => return ws::serve(shared, conn, req, cut).await,
        ("POST", "/v1/chat/completions" | "/beta/chat/completions") => {
            return completions::completion(shared, conn, req, true, cut, omit_done).await
        }
        ("POST", "/v1/completions") => {
            return completions::completion(shared, conn, req, false, cut, omit_done).await
        }
        ("GET" | "HEAD", "/v1/models") => models(shared),
        _ => echo(shared, req, body_sha256),
    };
    send(shared, conn, reply, req.keep_alive, head_only, cut).await
}

pub(crate) fn echo(shared: &Shared, req: &Request, body_sha256: String) -> Reply {
    let mut headers = serde_json::Map::new();
    for (k, v) in &req.headers {
        match headers.get_mut(k) {
            Some(Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(v);
            }
            _ => {
                headers.insert(k.clone(), Value::String(v.clone()));
            }
        }
    }
    Reply::json(
        200,
        &json!({
            "server": shared.name,
            "method": req.method,
            "path": req.target,
            "headers": headers,
            "body_len": req.body.len(),
            "body_sha256": body_sha256,
        }),
    )
}

pub(crate) fn control(shared: &Shared, req: &Request) -> Reply {
    let parsed = || serde_json::from_slice::<Value>(&req.body);
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/_sim/stats") => Reply::json(200, &json!(shared.stats())),
        ("GET", "/_sim/fault") => Reply::json(200, &json!(shared.fault())),
        ("POST" | "PUT", "/_sim/fault") => {
            let mut v = match parsed() {
                Ok(v @ Value::Object(_)) => v,
                _ => return Reply::error(400, "body must be a JSON fault object"),
            };
            if let Some(obj) = v.as_object_mut() {
                obj.entry("kind").or_insert_with(|| json!("none"));
            }
            match serde_json::from_value::<Fault>(v) {
                Ok(f) => match f.validate() {
                    Ok(()) => {
                        tracing::info!(server = %shared.name, fault = ?f, "sim fault set");
                        let reply = Reply::json(200, &json!(f));
                        shared.set_fault(f);
                        reply
                    }
                    Err(e) => Reply::error(400, &e),
                },
                Err(e) => Reply::error(400, &format!("bad fault: {e}")),
            }
        }
        ("POST" | "PUT", "/_sim/load") => {
            let Ok(v) = parsed() else {
                return Reply::error(400, "body must be {\"running\": n, \"waiting\": n}");
            };
            let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
            shared.kv.set_extra(n("running"), n("waiting"));
            Reply::json(
                200,
                &json!({"running": n("running"), "waiting": n("waiting")}),
            )
        }
        ("GET", "/_sim/health") => Reply::json(200, &json!({"mode": shared.health()})),
        ("POST" | "PUT", "/_sim/health") => {
            let mode = parsed()
                .ok()
                .and_then(|v| v.get("mode").cloned())
                .and_then(|m| serde_json::from_value::<HealthMode>(m).ok());
            match mode {
                Some(mode) => {
                    tracing::info!(server = %shared.name, ?mode, "sim health set");
                    shared.set_health(mode);
                    Reply::json(200, &json!({"mode": mode}))
                }
                None => Reply::error(400, "body must be {\"mode\":\"ok\"|\"fail\"|\"hang\"}"),
            }
        }
        ("POST", "/_sim/reset") => {
            shared.reset_stats();
            Reply::json(200, &json!({"status": "ok"}))
        }
        (_, "/_sim/stats" | "/_sim/fault" | "/_sim/health" | "/_sim/reset" | "/_sim/load") => {
            Reply::error(405, "method not allowed")
        }
        _ => Reply::error(404, "unknown control endpoint"),
    }
}

/// Writes a fixed-length response, or part of it when `cut` says so.
pub(crate) async fn send(
    shared: &Shared,
    conn: &mut Conn,
    reply: Reply,
    keep_alive: bool,
    head_only: bool,
    cut: Option<Cut>,
) -> Flow {
    let mut headers = reply.headers;
    headers.push(("x-sim-server", shared.name.clone()));
    let no_body = head_only || matches!(reply.code, 204 | 304);
    let framing = Framing::Length(if matches!(reply.code, 204 | 304) {
        0
    } else {
        reply.body.len()
    });
    let mut out = http::head(reply.code, &headers, framing, keep_alive);
    let body: &[u8] = if no_body { &[] } else { &reply.body };
    let sent = match cut {
        None => body,
        Some(_) => &body[..body.len() / 2],
    };
    out.extend_from_slice(sent);
    if conn.write(&out).await.is_err() {
        shared.count_disconnect();
        return Flow::Close;
    }
    cut_or_keep(shared, conn, cut).await
}

pub(crate) async fn cut_or_keep(shared: &Shared, conn: &mut Conn, cut: Option<Cut>) -> Flow {
    match cut {
        None => Flow::Keep,
        Some(Cut::Close(_) | Cut::End(_)) => Flow::Close,
        Some(Cut::Stall(_)) => {
            conn.wait_or_disconnect(None).await;
            shared.count_disconnect();
            Flow::Close
        }
    }
}
